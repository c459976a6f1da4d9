// The header's version macros match project(VERSION) in CMakeLists.txt.
#include <buffered/buffered_backend.hpp>

#include <gtest/gtest.h>

TEST(Version, HeaderMatchesProject) {
  EXPECT_EQ(BUFFERED_VERSION_MAJOR, BUFFERED_PROJECT_VERSION_MAJOR);
  EXPECT_EQ(BUFFERED_VERSION_MINOR, BUFFERED_PROJECT_VERSION_MINOR);
  EXPECT_EQ(BUFFERED_VERSION_PATCH, BUFFERED_PROJECT_VERSION_PATCH);
}
