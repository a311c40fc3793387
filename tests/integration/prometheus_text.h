#pragma once

// Reading Prometheus text exposition (what GET /metrics answers) in tests.

#include <map>
#include <string>
#include <vector>

namespace broker::testing {

// "name{labels}" (as rendered) -> value, for every sample line.
std::map<std::string, double> ParseSamples(const std::string& text);

// The sum of every sample of `name` whose labels contain each of `labels`
// (`name{...}` and a bare `name` both count).
double Sum(const std::map<std::string, double>& samples,
           const std::string& name,
           const std::vector<std::string>& labels = {});

}  // namespace broker::testing
