// Result<T>: the value of an operation that can fail for operational reasons
// (an errno-like code plus a human message). Bad *input* from peers is not an
// Error to propagate: it is counted and dropped at the edge (STYLE.md §9).
#pragma once

#include <cassert>
#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace berth {

struct Error {
  int code = EIO;       // errno value, used on the wire (Rlerror)
  std::string message;  // for logs and for ctl files' "ERROR ..." text

  static Error from_errno(int code, std::string message) { return Error{code, std::move(message)}; }
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Error err) : v_(std::move(err)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const { assert(!ok()); return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error err) : err_(std::move(err)), ok_(false) {}
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { assert(!ok_); return err_; }

 private:
  Error err_;
  bool ok_ = true;
};

inline Error make_error(int code, std::string message) { return Error{code, std::move(message)}; }

}  // namespace berth
