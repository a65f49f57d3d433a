// Reading and writing the fields of a model's config.json (nlohmann::json), shared by
// LlamaConfig and DiffusionConfig so both read and write the same way and report bad fields the
// same way: INVALID_ARGUMENT naming the field and what was found. Absent or null optional fields
// leave *out untouched. A config describes its fields once, as a table of Field (name, member,
// required); WriteFields and ReadFields walk it. Torch-free; pure functions.
#ifndef TANDEM_MODELS_FORMATS_CONFIG_JSON_H_
#define TANDEM_MODELS_FORMATS_CONFIG_JSON_H_

#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace tandem::config_json {

// Parses `json` into *out: INVALID_ARGUMENT when it is not valid JSON or not a JSON object.
absl::Status ParseObject(const std::string& json, nlohmann::json* out);

// The float as the shortest decimal that reads back to it (1e-05, not 9.99999974e-06).
double ShortestDouble(float value);

absl::Status GetInt(const nlohmann::json& j, const char* field, bool required, int* out);
absl::Status GetIntList(const nlohmann::json& j, const char* field, bool required,
                        std::vector<int>* out);
absl::Status GetFloat(const nlohmann::json& j, const char* field, float* out);
absl::Status GetBool(const nlohmann::json& j, const char* field, bool* out);
absl::Status GetString(const nlohmann::json& j, const char* field, std::string* out);
// OK when the field is absent or equals `expected`.
absl::Status CheckString(const nlohmann::json& j, const char* field, const char* expected);

// One field of a config.json: its name and the config member it holds, or (a const char*) the
// constant it holds, e.g. "kind": written as is, and on reading it must be that when present.
struct Field {
  using Value = std::variant<const char*, int*, std::vector<int>*, float*, bool*, std::string*>;
  const char* name;
  Value value;
  bool required = false;  // ints and int lists: INVALID_ARGUMENT when config.json lacks it
};

// The fields, in order, as a JSON object indented by 2 (floats as ShortestDouble).
std::string WriteFields(const std::vector<Field>& fields);

// Parses `json` (ParseObject) and reads each field, in order, into its member: the first error.
// `*parsed` (may be null) receives the parsed object.
absl::Status ReadFields(const std::string& json, const std::vector<Field>& fields,
                        nlohmann::json* parsed = nullptr);

}  // namespace tandem::config_json

#endif  // TANDEM_MODELS_FORMATS_CONFIG_JSON_H_
