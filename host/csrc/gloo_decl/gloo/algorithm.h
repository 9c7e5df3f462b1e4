// Declaration stub for torch's ProcessGroupGloo.hpp; see README.md in this folder.
#pragma once
#include "gloo/context.h"
