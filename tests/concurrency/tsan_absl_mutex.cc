// ThreadSanitizer cannot see absl::Mutex as Debian ships it: libabsl_synchronization is not
// instrumented, so every section it protects reads as a race. The TSan build of the concurrency
// tests links this file with -Wl,--wrap for the Mutex and CondVar entry points our code calls
// (tests/concurrency/CMakeLists.txt): each wrapper calls the real function and tells TSan what it
// did to the lock (the __tsan_mutex_* annotations absl emits itself when built with TSan). A
// Condition is wrapped too: absl may evaluate it on another thread (the one unlocking), and the
// evaluation is annotated as holding the lock there. Only built with -fsanitize=thread.
#include <sanitizer/tsan_interface.h>

#include "absl/synchronization/mutex.h"

using absl::CondVar;
using absl::Condition;
using absl::Mutex;

namespace {

// A Condition evaluated as holding `mu`, on whatever thread absl evaluates it.
struct Held {
  const Condition* inner;
  Mutex* mu;
  bool operator()() const {
    __tsan_mutex_pre_lock(mu, 0);
    __tsan_mutex_post_lock(mu, 0, 0);
    const bool result = inner->Eval();
    __tsan_mutex_pre_unlock(mu, 0);
    __tsan_mutex_post_unlock(mu, 0);
    return result;
  }
};

void Acquired(Mutex* mu, unsigned flags = 0) {
  __tsan_mutex_pre_lock(mu, flags);
  __tsan_mutex_post_lock(mu, flags, 0);
}
void Releasing(Mutex* mu, unsigned flags = 0) {
  __tsan_mutex_pre_unlock(mu, flags);
  __tsan_mutex_post_unlock(mu, flags);
}

}  // namespace

extern "C" {
void __real__ZN4absl7debian35Mutex4LockEv(Mutex*);
void __real__ZN4absl7debian35Mutex6UnlockEv(Mutex*);
bool __real__ZN4absl7debian35Mutex7TryLockEv(Mutex*);
void __real__ZN4absl7debian35Mutex10ReaderLockEv(Mutex*);
void __real__ZN4absl7debian35Mutex12ReaderUnlockEv(Mutex*);
void __real__ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE(Mutex*, const Condition&);
void __real__ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE(Mutex*, const Condition&);
bool __real__ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE(
    Mutex*, const Condition&, absl::Duration);
void __real__ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(CondVar*, Mutex*);

void __wrap__ZN4absl7debian35Mutex4LockEv(Mutex* mu) {
  __real__ZN4absl7debian35Mutex4LockEv(mu);
  Acquired(mu);
}
void __wrap__ZN4absl7debian35Mutex6UnlockEv(Mutex* mu) {
  Releasing(mu);
  __real__ZN4absl7debian35Mutex6UnlockEv(mu);
}
bool __wrap__ZN4absl7debian35Mutex7TryLockEv(Mutex* mu) {
  const bool locked = __real__ZN4absl7debian35Mutex7TryLockEv(mu);
  if (locked) Acquired(mu, __tsan_mutex_try_lock);
  return locked;
}
void __wrap__ZN4absl7debian35Mutex10ReaderLockEv(Mutex* mu) {
  __real__ZN4absl7debian35Mutex10ReaderLockEv(mu);
  Acquired(mu, __tsan_mutex_read_lock);
}
void __wrap__ZN4absl7debian35Mutex12ReaderUnlockEv(Mutex* mu) {
  Releasing(mu, __tsan_mutex_read_lock);
  __real__ZN4absl7debian35Mutex12ReaderUnlockEv(mu);
}
void __wrap__ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE(Mutex* mu, const Condition& cond) {
  const Held held{&cond, mu};
  Releasing(mu);  // Await lets go of the lock while it waits
  __real__ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE(mu, Condition(&held));
  Acquired(mu);
}
bool __wrap__ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE(
    Mutex* mu, const Condition& cond, absl::Duration timeout) {
  const Held held{&cond, mu};
  Releasing(mu);
  const bool met = __real__ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE(
      mu, Condition(&held), timeout);
  Acquired(mu);
  return met;
}
void __wrap__ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE(Mutex* mu, const Condition& cond) {
  const Held held{&cond, mu};
  __real__ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE(mu, Condition(&held));
  Acquired(mu);
}
void __wrap__ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(CondVar* cv, Mutex* mu) {
  Releasing(mu);
  __real__ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(cv, mu);
  Acquired(mu);
}
}  // extern "C"
