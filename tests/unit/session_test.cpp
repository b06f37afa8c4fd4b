#include <catch2/catch.hpp>
#include "server9p/session.h"
