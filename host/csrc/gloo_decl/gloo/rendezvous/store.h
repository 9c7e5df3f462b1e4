// Declaration stub for torch's ProcessGroupGloo.hpp; see README.md in this folder.
// ProcessGroupGloo::GlooStore derives from this class and overrides these four virtuals inline
// (GLOO_STORE_HAS_STORE_V2 stays undefined, so the v2 ones are not named). GlooStore objects
// are only ever built inside libtorch, with Gloo's real class.
#pragma once
#include <chrono>
#include <string>
#include <vector>

namespace gloo {
namespace rendezvous {

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& value) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) = 0;
};

} // namespace rendezvous
} // namespace gloo
