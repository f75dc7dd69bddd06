// attnkit: header-only CPU attention kernels. The only include a user needs.
#pragma once

#include "attnkit/attention.hpp"
#include "attnkit/backend/backend.hpp"
#include "attnkit/core/cost.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/mechanism/dense.hpp"
#include "attnkit/mechanism/ecoformer.hpp"
#include "attnkit/mechanism/linear.hpp"
#include "attnkit/mechanism/performer.hpp"
#include "attnkit/mechanism/performer_features.hpp"
