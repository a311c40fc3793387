#include "tests/testing/child_process.h"

#include "gtest/gtest-spi.h"
#include "gtest/gtest.h"

#include <map>
#include <memory>
#include <string>

namespace broker::testing {
namespace {

// Runs `sh -c script` to its end with `env`; the check runs when the
// process object goes.
void RunShell(const std::string& script,
              const std::map<std::string, std::string>& env = {}) {
  auto child = ChildProcess::Start("/bin/sh", {"-c", script}, env);
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<int> exit_code = (*child)->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
}

TEST(ChildProcessTest, ATokenGivenInTheEnvironmentMustNotBePrinted) {
  EXPECT_NONFATAL_FAILURE(RunShell("echo \"connected with $BROKER_TOKEN\"",
                                   {{"BROKER_TOKEN", "tok-env-0123456789"}}),
                          "printed a token to stdout");
}

TEST(ChildProcessTest, AForbiddenValueOnStderrIsFoundToo) {
  ForbidInChildOutput("tok-added-9876543210");
  EXPECT_NONFATAL_FAILURE(RunShell("echo tok-added-9876543210 >&2"),
                          "printed a token to stderr");
}

TEST(ChildProcessTest, HashedOrAbsentTokensPass) {
  ForbidInChildOutput("tok-clean-5555555555");
  RunShell("echo 'hashed_token=9f86d081884c'; echo tok-clean >&2",
           {{"BROKER_TOKEN", "tok-clean-5555555555"}});
}

TEST(ChildProcessTest, ShortValuesAreNotSecrets) {
  // "true" would match half of every log.
  RunShell("echo true", {{"SOME_TOKEN", "true"}});
}

}  // namespace
}  // namespace broker::testing
