#pragma once

// Kept equal to project(VERSION) in CMakeLists.txt; a test checks it.
#define BUFFERED_VERSION_MAJOR 0
#define BUFFERED_VERSION_MINOR 1
#define BUFFERED_VERSION_PATCH 0
