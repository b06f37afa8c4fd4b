#include <catch2/catch.hpp>
#include "server9p/proto.h"
