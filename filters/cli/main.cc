// broker-filter: test an accept.json before deploying it.

#include "filters/cli/broker_filter.h"

#include <iostream>
#include <string>
#include <vector>

extern char** environ;

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return broker::filters::RunBrokerFilter(
      args, broker::filters::Variables::FromEnviron(environ), std::cout,
      std::cerr);
}
