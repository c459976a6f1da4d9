#include "report.hpp"

#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "bench.hpp"

namespace bench {
namespace {

std::string trim(std::string s) {
  const auto first = s.find_first_not_of(" \t\n");
  const auto last = s.find_last_not_of(" \t\n");
  return first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
}

}  // namespace

Summary summarize(std::vector<double> v) {
  if (v.empty() || std::isnan(v.front())) return {NAN, NAN, NAN};
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

std::string fmt(const char* format, double v) {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string ratio(double a, double b) { return fmt("%.2fx", a / b); }

std::string verdict(double value, double bound, bool at_least) {
  if (std::isnan(value) || std::isnan(bound)) return "";
  return (at_least ? value >= bound : value <= bound) ? ": met" : ": MISSED";
}

Machine this_machine() {
  Machine m;
  if (std::FILE* f = std::fopen("/proc/cpuinfo", "r")) {
    char line[512];
    bool named = false;
    while (std::fgets(line, sizeof line, f)) {
      const std::string l = line;
      const auto colon = l.find(':');
      if (colon == std::string::npos) continue;
      const std::string key = trim(l.substr(0, colon));
      if (key == "processor") ++m.cpuinfo_processors;
      if (key == "model name" && !named) {
        m.cpu = trim(l.substr(colon + 1));
        named = true;
      }
    }
    std::fclose(f);
  }
#if defined(__clang__)
  m.compiler = __VERSION__;
#elif defined(__GNUC__)
  m.compiler = "g++ " __VERSION__;
#else
  m.compiler = "unknown compiler";
#endif
#ifndef __OPTIMIZE__
  m.compiler += " (UNOPTIMIZED BUILD)";
#endif
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%d", &utc);
  m.date = date;
  return m;
}

std::string load_average() {
  std::string load = "unknown";
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    double a = 0, b = 0, c = 0;
    if (std::fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.2f %.2f %.2f", a, b, c);
      load = buf;
    }
    std::fclose(f);
  }
  return load;
}

}  // namespace bench
