#include "base/io_faults.h"

#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"

namespace tandem {
namespace {

enum class Action { kEnospc, kEio, kKill, kLog };

struct Rule {
  std::string point;      // "*" for every point
  std::string substring;  // empty: every path
  Action action = Action::kLog;
  int64_t after = 0;
  int64_t times = 0;  // 0: unbounded
  int64_t hits = 0;   // matching hits so far
};

struct State {
  absl::Mutex mu;
  std::vector<Rule> rules ABSL_GUARDED_BY(mu);
  int64_t fired ABSL_GUARDED_BY(mu) = 0;
};

State& GetState() {
  static State* s = new State();
  return *s;
}

std::atomic<bool> g_armed{false};

absl::Status ParseRule(absl::string_view text, Rule* rule) {
  text = absl::StripAsciiWhitespace(text);
  const std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  const size_t eq = parts[0].find('=');
  if (eq == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("io fault rule \"", text,
                                                   "\" is not POINT[@SUBSTRING]=ACTION[:...]"));
  }
  absl::string_view target = parts[0].substr(0, eq), action = parts[0].substr(eq + 1);
  const size_t at = target.find('@');
  rule->point = std::string(target.substr(0, at));
  if (at != absl::string_view::npos) rule->substring = std::string(target.substr(at + 1));
  if (rule->point.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("io fault rule \"", text, "\" has no point"));
  }
  if (action == "ENOSPC") {
    rule->action = Action::kEnospc;
  } else if (action == "EIO") {
    rule->action = Action::kEio;
  } else if (action == "KILL") {
    rule->action = Action::kKill;
  } else if (action == "LOG") {
    rule->action = Action::kLog;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("io fault rule \"", text,
                                                   "\": the action must be ENOSPC, EIO, KILL "
                                                   "or LOG"));
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    int64_t* field = absl::StartsWith(parts[i], "after=")   ? &rule->after
                     : absl::StartsWith(parts[i], "times=") ? &rule->times
                                                            : nullptr;
    if (field == nullptr || !absl::SimpleAtoi(parts[i].substr(6), field) || *field < 0) {
      return absl::InvalidArgumentError(absl::StrCat("io fault rule \"", text, "\": \"", parts[i],
                                                     "\" is not after=N or times=M"));
    }
  }
  return absl::OkStatus();
}

void ArmFromEnvironmentOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("TANDEM_IO_FAULTS");
    if (env == nullptr || *env == '\0') return;
    if (absl::Status s = ArmIoFaults(env); !s.ok()) {
      std::fprintf(stderr, "tandem: TANDEM_IO_FAULTS ignored: %s\n",
                   std::string(s.message()).c_str());
    }
  });
}

}  // namespace

absl::Status ArmIoFaults(absl::string_view rules) {
  std::vector<Rule> parsed;
  for (absl::string_view text : absl::StrSplit(rules, ';', absl::SkipWhitespace())) {
    Rule rule;
    if (absl::Status s = ParseRule(text, &rule); !s.ok()) return s;
    parsed.push_back(std::move(rule));
  }
  State& state = GetState();
  absl::MutexLock lock(&state.mu);
  state.rules = std::move(parsed);
  state.fired = 0;
  g_armed.store(!state.rules.empty(), std::memory_order_release);
  return absl::OkStatus();
}

void DisarmIoFaults() { ArmIoFaults("").IgnoreError(); }

int64_t IoFaultsFired() {
  State& state = GetState();
  absl::MutexLock lock(&state.mu);
  return state.fired;
}

int IoFault(const char* point, absl::string_view path) {
  ArmFromEnvironmentOnce();
  if (!g_armed.load(std::memory_order_relaxed)) return 0;
  State& state = GetState();
  absl::MutexLock lock(&state.mu);
  for (Rule& rule : state.rules) {
    if (rule.point != "*" && rule.point != point) continue;
    if (!rule.substring.empty() && path.find(rule.substring) == absl::string_view::npos) continue;
    const int64_t hit = ++rule.hits;
    if (rule.action == Action::kLog) {
      std::fprintf(stderr, "tandem-io-fault: hit %lld %s %s\n", static_cast<long long>(hit),
                   point, std::string(path).c_str());
      return 0;
    }
    if (hit <= rule.after || (rule.times > 0 && hit > rule.after + rule.times)) return 0;
    switch (rule.action) {
      case Action::kKill:
        std::fprintf(stderr, "tandem-io-fault: SIGKILL at %s %s (hit %lld)\n", point,
                     std::string(path).c_str(), static_cast<long long>(hit));
        std::fflush(stderr);
        ::kill(::getpid(), SIGKILL);
        ::_exit(137);  // not reached
      case Action::kEnospc:
        ++state.fired;
        return ENOSPC;
      case Action::kEio:
        ++state.fired;
        return EIO;
      case Action::kLog:
        break;
    }
  }
  return 0;
}

ssize_t FaultableWrite(int fd, const void* data, size_t size, absl::string_view path) {
  if (const int err = IoFault("write", path)) {
    errno = err;
    return -1;
  }
  return ::write(fd, data, size);
}

int FaultableFsync(int fd, absl::string_view path) {
  if (const int err = IoFault("fsync", path)) {
    errno = err;
    return -1;
  }
  return ::fsync(fd);
}

int FaultableRename(const char* from, const char* to) {
  if (const int err = IoFault("rename", to)) {
    errno = err;
    return -1;
  }
  return ::rename(from, to);
}

}  // namespace tandem
