#include "models/formats/config_json.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"

namespace tandem::config_json {
namespace {

absl::Status MissingField(const char* field) {
  return absl::InvalidArgumentError(
      absl::StrCat("config is missing the required field \"", field, "\""));
}

absl::Status IntFromJson(const nlohmann::json& v, const std::string& field, int* out) {
  if (!v.is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be an integer, got ", v.dump()));
  }
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(field, " (", u, ") is out of range"));
    }
    *out = static_cast<int>(u);
    return absl::OkStatus();
  }
  const int64_t s = v.get<int64_t>();
  if (s < std::numeric_limits<int>::min() || s > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " (", s, ") is out of range"));
  }
  *out = static_cast<int>(s);
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseObject(const std::string& json, nlohmann::json* out) {
  *out = nlohmann::json::parse(json, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (out->is_discarded()) return absl::InvalidArgumentError("config is not valid JSON");
  if (!out->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config must be a JSON object, got ", out->type_name()));
  }
  return absl::OkStatus();
}

double ShortestDouble(float value) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  if (ec != std::errc()) return static_cast<double>(value);
  *end = '\0';
  return std::strtod(buf, nullptr);
}

absl::Status GetInt(const nlohmann::json& j, const char* field, bool required, int* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return required ? MissingField(field) : absl::OkStatus();
  return IntFromJson(*it, field, out);
}

absl::Status GetIntList(const nlohmann::json& j, const char* field, bool required,
                        std::vector<int>* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return required ? MissingField(field) : absl::OkStatus();
  if (!it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be an array of integers, got ", it->dump()));
  }
  std::vector<int> values;
  for (size_t i = 0; i < it->size(); ++i) {
    int v = 0;
    if (auto s = IntFromJson((*it)[i], absl::StrCat(field, "[", i, "]"), &v); !s.ok()) return s;
    values.push_back(v);
  }
  *out = std::move(values);
  return absl::OkStatus();
}

absl::Status GetFloat(const nlohmann::json& j, const char* field, float* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be a number, got ", it->dump()));
  }
  const double v = it->get<double>();
  if (!std::isfinite(v) || std::fabs(v) > std::numeric_limits<float>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " (", it->dump(), ") is out of range"));
  }
  *out = static_cast<float>(v);
  return absl::OkStatus();
}

absl::Status GetBool(const nlohmann::json& j, const char* field, bool* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be true or false, got ",
                                                   it->dump()));
  }
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status GetString(const nlohmann::json& j, const char* field, std::string* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be a string, got ", it->dump()));
  }
  *out = it->get<std::string>();
  return absl::OkStatus();
}

absl::Status CheckString(const nlohmann::json& j, const char* field, const char* expected) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string() || it->get<std::string>() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be \"", expected, "\", got ", it->dump()));
  }
  return absl::OkStatus();
}

std::string WriteFields(const std::vector<Field>& fields) {
  nlohmann::ordered_json j;
  for (const Field& f : fields) {
    std::visit(
        [&](auto* value) {
          using T = std::remove_const_t<std::remove_pointer_t<decltype(value)>>;
          if constexpr (std::is_same_v<T, char>) {
            j[f.name] = value;  // a constant
          } else if constexpr (std::is_same_v<T, float>) {
            j[f.name] = ShortestDouble(*value);
          } else {
            j[f.name] = *value;
          }
        },
        f.value);
  }
  return j.dump(2);
}

absl::Status ReadFields(const std::string& json, const std::vector<Field>& fields,
                        nlohmann::json* parsed) {
  nlohmann::json j;
  if (absl::Status s = ParseObject(json, &j); !s.ok()) return s;
  for (const Field& f : fields) {
    absl::Status s = std::visit(
        [&](auto* value) -> absl::Status {
          using T = std::remove_const_t<std::remove_pointer_t<decltype(value)>>;
          if constexpr (std::is_same_v<T, char>) {
            return CheckString(j, f.name, value);
          } else if constexpr (std::is_same_v<T, int>) {
            return GetInt(j, f.name, f.required, value);
          } else if constexpr (std::is_same_v<T, std::vector<int>>) {
            return GetIntList(j, f.name, f.required, value);
          } else if constexpr (std::is_same_v<T, float>) {
            return GetFloat(j, f.name, value);
          } else if constexpr (std::is_same_v<T, bool>) {
            return GetBool(j, f.name, value);
          } else {
            static_assert(std::is_same_v<T, std::string>);
            return GetString(j, f.name, value);
          }
        },
        f.value);
    if (!s.ok()) return s;
  }
  if (parsed != nullptr) *parsed = std::move(j);
  return absl::OkStatus();
}

}  // namespace tandem::config_json
