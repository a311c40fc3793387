#pragma once

#include <fstream>
#include <sstream>
#include <string>

namespace broker::testing {

// Absolute path of a file under tests/fixtures/.
inline std::string FixturePath(const std::string& relative) {
  return std::string(BROKER_TEST_FIXTURES_DIR) + "/" + relative;
}

// Contents of a file under tests/fixtures/ ("" when missing; tests assert on
// what they read).
inline std::string ReadFixture(const std::string& relative) {
  std::ifstream in(FixturePath(relative), std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace broker::testing
