#include "server/api/build_info.h"

namespace tandem {

const char* BuildVersion() { return TANDEM_VERSION; }

}  // namespace tandem
