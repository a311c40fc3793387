#include "tests/integration/prometheus_text.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

#include <cstddef>

namespace broker::testing {

std::map<std::string, double> ParseSamples(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const std::size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    double value = 0;
    if (!absl::SimpleAtod(line.substr(space + 1), &value)) continue;
    out[std::string(line.substr(0, space))] = value;
  }
  return out;
}

double Sum(const std::map<std::string, double>& samples,
           const std::string& name, const std::vector<std::string>& labels) {
  double sum = 0;
  for (const auto& [key, value] : samples) {
    if (key != name && !absl::StartsWith(key, name + "{")) continue;
    bool all = true;
    for (const std::string& label : labels) {
      all = all && absl::StrContains(key, label);
    }
    if (all) sum += value;
  }
  return sum;
}

}  // namespace broker::testing
