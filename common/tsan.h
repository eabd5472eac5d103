// ThreadSanitizer support. QUANTD_TSAN is defined when the translation unit is built with
// -fsanitize=thread (GCC or clang); everything here is a no-op otherwise.
//
// ReactionBegin / ReactionHandOff tell TSan about one ordering that Debian's uninstrumented
// libgrpc makes invisible: gRPC's callback API runs the reactions of one call (the reactor's
// constructor, OnReadDone, OnWriteDone, OnDone) on different gRPC threads, one after another,
// ordered by synchronization inside libgrpc. The next reaction can begin as soon as the current
// one calls StartRead, StartWrite or Finish, so a reactor calls ReactionHandOff(this) right
// before each of those and ReactionBegin(this) first thing in each reaction: exactly the order
// gRPC guarantees, nothing more (server/services.cc wraps both in OrderedReactor). Not for
// OnCancel, which gRPC may run concurrently with a reaction, nor for state another thread of
// ours touches (that needs a Mutex).
#ifndef QUANTD_COMMON_TSAN_H_
#define QUANTD_COMMON_TSAN_H_

#if defined(__SANITIZE_THREAD__)
#define QUANTD_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define QUANTD_TSAN 1
#endif
#endif

#ifdef QUANTD_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace quantd {

#ifdef QUANTD_TSAN
inline void ReactionBegin(const void* reactor) { __tsan_acquire(const_cast<void*>(reactor)); }
inline void ReactionHandOff(const void* reactor) { __tsan_release(const_cast<void*>(reactor)); }
#else
inline void ReactionBegin(const void* /*reactor*/) {}
inline void ReactionHandOff(const void* /*reactor*/) {}
#endif

}  // namespace quantd

#endif  // QUANTD_COMMON_TSAN_H_
