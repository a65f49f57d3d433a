// BuildVersion: the version tandem was built as — CMake's TANDEM_VERSION, by default `git
// describe` of the source tree at configure time ("unknown" outside a git checkout). Reported as
// tandem_build_info{version}.
#ifndef TANDEM_SERVER_API_BUILD_INFO_H_
#define TANDEM_SERVER_API_BUILD_INFO_H_

namespace tandem {

const char* BuildVersion();

}  // namespace tandem

#endif  // TANDEM_SERVER_API_BUILD_INFO_H_
