// Declaration stub for torch's ProcessGroupGloo.hpp; see README.md in this folder.
#pragma once

namespace gloo {
namespace transport {

// Both only named through smart pointers.
class Device;
class UnboundBuffer;

} // namespace transport
} // namespace gloo
