#pragma once

#include "filters/origin.h"

#include <ostream>
#include <string>
#include <vector>

namespace broker::filters {

// `broker-filter`, the command users run to test an accept.json:
//   check --accept FILE --list private|public --method M --url URL
//         [--header 'Name: value']... [--body-file FILE]
//   lint [--strict] FILE
// `args` excludes the program name. Returns the exit code: 0 when the
// command ran (allowed or not; lint without errors), 1 for lint errors (or
// warnings with --strict), 2 for unusable input.
int RunBrokerFilter(const std::vector<std::string>& args,
                    const Variables& variables, std::ostream& out,
                    std::ostream& err);

}  // namespace broker::filters
