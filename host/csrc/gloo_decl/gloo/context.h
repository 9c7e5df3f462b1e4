// Declaration stub for torch's ProcessGroupGloo.hpp; see README.md in this folder.
#pragma once
#include <chrono>

namespace gloo {

// Only named through std::shared_ptr; ProcessGroupGloo::setTimeout calls setTimeout inline.
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};

} // namespace gloo
