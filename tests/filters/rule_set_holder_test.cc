#include "filters/rule_set_holder.h"

#include "filters/request.h"
#include "filters/rule_set.h"
#include "tests/testing/status_matchers.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace broker::filters {
namespace {

using ::broker::testing::IsOk;
using ::testing::Not;

constexpr absl::string_view kAllowsA =
    R"({"private": [{"path": "/a", "origin": "https://a"}]})";
constexpr absl::string_view kAllowsB =
    R"({"private": [{"path": "/b", "origin": "https://b"}]})";
constexpr absl::string_view kAllowsBYaml =
    "private:\n  - path: /b\n    origin: https://b\n";

std::shared_ptr<const RuleSet> Load(absl::string_view text) {
  absl::StatusOr<std::shared_ptr<const RuleSet>> rules =
      RuleSet::FromText(text, "accept.json");
  EXPECT_THAT(rules, IsOk());
  return rules.ok() ? *rules : nullptr;
}

bool Allows(const RuleSet& rules, absl::string_view url) {
  return rules.Evaluate(RuleList::kPrivate, RequestView{"GET", url, {}, ""})
      .allowed();
}

// A file under the test's temporary directory, removed at the end.
class TempFile {
 public:
  explicit TempFile(absl::string_view name)
      : path_(absl::StrCat(
            ::testing::TempDir(), "/rule_set_holder_test_",
            ::testing::UnitTest::GetInstance()->current_test_info()->name(),
            "_", name)) {}
  ~TempFile() { std::remove(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void Write(absl::string_view text) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    ASSERT_TRUE(out.good()) << path_;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(RuleSetHolderTest, ReloadFromFileSwapsTheRules) {
  RuleSetHolder holder(Load(kAllowsA));
  ASSERT_NE(holder.Current(), nullptr);
  EXPECT_TRUE(Allows(*holder.Current(), "/a"));
  EXPECT_FALSE(Allows(*holder.Current(), "/b"));

  TempFile file("accept.json");
  file.Write(kAllowsB);
  ASSERT_THAT(holder.ReloadFromFile(file.path()), IsOk());
  EXPECT_FALSE(Allows(*holder.Current(), "/a"));
  EXPECT_TRUE(Allows(*holder.Current(), "/b"));

  // YAML reloads too, and reloading the same file again is harmless.
  TempFile yaml("accept.yaml");
  yaml.Write(kAllowsBYaml);
  ASSERT_THAT(holder.ReloadFromFile(yaml.path()), IsOk());
  EXPECT_TRUE(Allows(*holder.Current(), "/b"));
  file.Write(kAllowsA);
  ASSERT_THAT(holder.ReloadFromFile(file.path()), IsOk());
  EXPECT_TRUE(Allows(*holder.Current(), "/a"));
  EXPECT_FALSE(Allows(*holder.Current(), "/b"));
}

TEST(RuleSetHolderTest, BrokenFileKeepsTheOldRules) {
  RuleSetHolder holder(Load(kAllowsA));
  const std::shared_ptr<const RuleSet> before = holder.Current();
  ASSERT_NE(before, nullptr);

  TempFile file("accept.json");
  const absl::string_view kBroken[] = {
      R"({"private": [{"path": "/b",}]})",                   // not JSON
      R"({"private": [{"method": "FROB", "path": "/b"}]})",  // bad method
      R"({"private": [42]})",                                // not a rule
      "",                                                    // empty
  };
  for (absl::string_view text : kBroken) {
    SCOPED_TRACE(text);
    file.Write(text);
    const absl::Status status = holder.ReloadFromFile(file.path());
    EXPECT_THAT(status, Not(IsOk()));
    EXPECT_FALSE(status.message().empty());
    EXPECT_EQ(holder.Current(), before);
    EXPECT_TRUE(Allows(*holder.Current(), "/a"));
    EXPECT_FALSE(Allows(*holder.Current(), "/b"));
  }

  const absl::Status missing =
      holder.ReloadFromFile(file.path() + ".does-not-exist");
  EXPECT_THAT(missing, Not(IsOk()));
  EXPECT_EQ(holder.Current(), before);
}

TEST(RuleSetHolderTest, SetTakenBeforeReloadKeepsEvaluatingOldRules) {
  RuleSetHolder holder(Load(kAllowsA));
  const std::shared_ptr<const RuleSet> old_rules = holder.Current();
  ASSERT_NE(old_rules, nullptr);
  const std::string old_digest = old_rules->digest();

  TempFile file("accept.json");
  file.Write(kAllowsB);
  ASSERT_THAT(holder.ReloadFromFile(file.path()), IsOk());

  const std::shared_ptr<const RuleSet> new_rules = holder.Current();
  EXPECT_NE(new_rules, old_rules);
  EXPECT_NE(new_rules->digest(), old_digest);
  // The old set is still whole: its rules, source and digest.
  EXPECT_TRUE(Allows(*old_rules, "/a"));
  EXPECT_FALSE(Allows(*old_rules, "/b"));
  EXPECT_EQ(old_rules->digest(), old_digest);
  EXPECT_EQ(old_rules->rules(RuleList::kPrivate).size(), 1u);
  const Decision decision =
      old_rules->Evaluate(RuleList::kPrivate, RequestView{"GET", "/a", {}, ""});
  ASSERT_TRUE(decision.allowed());
  EXPECT_EQ(decision.rule->source.value("origin", ""), "https://a");
}

TEST(RuleSetHolderTest, ReplaceSwapsInAGivenSet) {
  RuleSetHolder holder(Load(kAllowsA));
  const std::shared_ptr<const RuleSet> next = Load(kAllowsB);
  ASSERT_NE(next, nullptr);
  holder.Replace(next);
  EXPECT_EQ(holder.Current(), next);
}

// Two readers evaluate while two writers swap sets. Each set allows exactly
// one of "/a" and "/b": a reader that ever sees both or neither has observed a
// torn or freed set. Iterations are bounded; the threads start together.
TEST(RuleSetHolderTest, ConcurrentCurrentAndReplace) {
  const std::shared_ptr<const RuleSet> set_a = Load(kAllowsA);
  const std::shared_ptr<const RuleSet> set_b = Load(kAllowsB);
  ASSERT_NE(set_a, nullptr);
  ASSERT_NE(set_b, nullptr);
  RuleSetHolder holder(set_a);

  constexpr int kReaderIterations = 20000;
  constexpr int kWriterIterations = 5000;
  absl::Notification start;
  std::atomic<int> inconsistent{0};
  std::atomic<int> saw_a{0};
  std::atomic<int> saw_b{0};

  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&] {
      start.WaitForNotification();
      for (int i = 0; i < kReaderIterations; ++i) {
        const std::shared_ptr<const RuleSet> rules = holder.Current();
        if (rules == nullptr) {
          inconsistent.fetch_add(1);
          continue;
        }
        const bool a = Allows(*rules, "/a");
        const bool b = Allows(*rules, "/b");
        if (a == b) inconsistent.fetch_add(1);
        (a ? saw_a : saw_b).fetch_add(1);
      }
    });
  }
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      start.WaitForNotification();
      for (int i = 0; i < kWriterIterations; ++i) {
        // Fresh sets now and then, so that old ones are really released.
        if (i % 100 == 0) {
          holder.Replace(Load((i / 100 + w) % 2 == 0 ? kAllowsA : kAllowsB));
        } else {
          holder.Replace((i + w) % 2 == 0 ? set_a : set_b);
        }
      }
    });
  }
  start.Notify();
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(inconsistent.load(), 0);
  EXPECT_EQ(saw_a.load() + saw_b.load(), 2 * kReaderIterations);
  const std::shared_ptr<const RuleSet> last = holder.Current();
  ASSERT_NE(last, nullptr);
  EXPECT_NE(Allows(*last, "/a"), Allows(*last, "/b"));
}

}  // namespace
}  // namespace broker::filters
