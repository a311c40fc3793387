#pragma once

// Status helpers shared by every library: early-return macros and an always-on
// invariant check. Abseil 20220623 has neither (status_macros.h arrived later).

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include <cstdio>
#include <cstdlib>

#define BROKER_STATUS_CONCAT_INNER_(a, b) a##b
#define BROKER_STATUS_CONCAT_(a, b) BROKER_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define BROKER_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status broker_status_ = (expr);          \
    if (!broker_status_.ok()) return broker_status_; \
  } while (false)

// NOLINTBEGIN(bugprone-macro-parentheses): `lhs` may be a declaration.
// `BROKER_ASSIGN_OR_RETURN(auto x, MakeX());` declares x from an OK StatusOr,
// or returns its status.
#define BROKER_ASSIGN_OR_RETURN(lhs, expr) \
  BROKER_ASSIGN_OR_RETURN_IMPL_(           \
      BROKER_STATUS_CONCAT_(broker_statusor_, __LINE__), lhs, expr)
#define BROKER_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = *std::move(statusor)
// NOLINTEND(bugprone-macro-parentheses)

// A broken internal invariant: crash with the location, in every build mode.
#define BROKER_CHECK(cond)                                               \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::fprintf(stderr, "%s:%d: BROKER_CHECK failed: %s\n", __FILE__, \
                   __LINE__, #cond);                                     \
      std::abort();                                                      \
    }                                                                    \
  } while (false)
