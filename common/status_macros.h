// Status propagation macros with the meaning of abseil's newer ABSL_RETURN_IF_ERROR /
// ABSL_ASSIGN_OR_RETURN, which the Debian abseil (20220623) does not have.
// Thread-safety: stateless macros.
#ifndef QUANTD_COMMON_STATUS_MACROS_H_
#define QUANTD_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QUANTD_CONCAT_INNER_(a, b) a##b
#define QUANTD_CONCAT_(a, b) QUANTD_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function if not ok.
#define QUANTD_RETURN_IF_ERROR(expr)                    \
  do {                                                  \
    ::absl::Status quantd_status_ = (expr);             \
    if (!quantd_status_.ok()) return quantd_status_;    \
  } while (0)

// `lhs` = value of `rexpr` (an absl::StatusOr<T>), or returns its status from the enclosing
// function. `lhs` may be a declaration: QUANTD_ASSIGN_OR_RETURN(auto x, Foo());
#define QUANTD_ASSIGN_OR_RETURN(lhs, rexpr) \
  QUANTD_ASSIGN_OR_RETURN_IMPL_(QUANTD_CONCAT_(quantd_statusor_, __LINE__), lhs, rexpr)

#define QUANTD_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // QUANTD_COMMON_STATUS_MACROS_H_
