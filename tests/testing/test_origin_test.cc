// The test origin's /sink, and its SCM-like API (/api/v3/repos/...) over a
// real bare repository made with git in a temporary directory.

#include "tests/testing/test_origin.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core/flat_buffer.hpp"
#include "boost/beast/http/parser.hpp"
#include "boost/beast/http/read.hpp"
#include "boost/beast/http/string_body.hpp"
#include "boost/beast/http/write.hpp"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace broker::testing {
namespace {

namespace bhttp = boost::beast::http;
using json = nlohmann::json;

struct Answer {
  int status = 0;
  std::string content_type;
  std::string raw;
  json Body() const { return json::parse(raw, nullptr, false); }
};

// One blocking HTTP/1.1 request to the origin.
Answer Call(const TestOrigin& origin, const std::string& target,
            bhttp::verb method = bhttp::verb::get, std::string body = "") {
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  boost::system::error_code ec;
  socket.connect({boost::asio::ip::make_address("127.0.0.1"),
                  static_cast<std::uint16_t>(origin.port())},
                 ec);
  EXPECT_FALSE(ec) << ec.message();
  bhttp::request<bhttp::string_body> request(method, target, 11);
  request.set(bhttp::field::host, "127.0.0.1");
  request.body() = std::move(body);
  request.prepare_payload();
  bhttp::write(socket, request, ec);
  EXPECT_FALSE(ec) << ec.message();
  boost::beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  // A HEAD answer has a Content-Length and no body.
  parser.skip(method == bhttp::verb::head);
  bhttp::read(socket, buffer, parser, ec);
  EXPECT_FALSE(ec) << ec.message();
  const auto& response = parser.get();
  Answer answer;
  answer.status = static_cast<int>(response.result_int());
  answer.content_type = std::string(response[bhttp::field::content_type]);
  answer.raw = response.body();
  return answer;
}

TEST(TestOriginTest, SinkCountsTheBodyWithoutHashingIt) {
  auto origin = TestOrigin::Start({});
  ASSERT_TRUE(origin.ok()) << origin.status();
  const std::string body(300 * 1024 + 7, 'x');
  const Answer sink = Call(**origin, "/sink", bhttp::verb::post, body);
  EXPECT_EQ(sink.status, 200);
  EXPECT_EQ(sink.Body(), json({{"body_bytes", body.size()}}));
  // /echo on the same origin still hashes (the flag is per request).
  const Answer echo = Call(**origin, "/echo", bhttp::verb::post, "abc");
  EXPECT_EQ(echo.Body()["body_sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

class TestOriginApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "test-origin-api-XXXXXX")
            .string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in the test sets env.
    const char* path = std::getenv("PATH");
    env_ = {absl::StrCat("PATH=", path != nullptr ? path : "/usr/bin:/bin"),
            absl::StrCat("HOME=", dir_),
            "GIT_CONFIG_NOSYSTEM=1",
            "GIT_AUTHOR_NAME=Test",
            "GIT_AUTHOR_EMAIL=test@example.com",
            "GIT_COMMITTER_NAME=Test",
            "GIT_COMMITTER_EMAIL=test@example.com",
            "LC_ALL=C"};
    const std::string src = dir_ + "/src";
    Git({"init", "-q", "--initial-branch=trunk", src});
    std::filesystem::create_directories(src + "/docs");
    Write(src + "/package.json", kPackageJson);
    Write(src + "/docs/guide.md", "# Guide\n");
    Git({"-C", src, "add", "-A"});
    Git({"-C", src, "commit", "-q", "-m", "First commit"});
    blob_sha_ = std::string(absl::StripTrailingAsciiWhitespace(
        Git({"-C", src, "rev-parse", "HEAD:package.json"})));
    root_ = dir_ + "/root";
    std::filesystem::create_directories(root_ + "/acme");
    Git({"clone", "-q", "--bare", src, root_ + "/acme/demo.git"});
    TestOriginOptions options;
    options.git_project_root = root_;
    auto origin = TestOrigin::Start(std::move(options));
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
  }

  void TearDown() override {
    origin_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  std::string Git(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"git"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto run = RunProcess(argv, env_);
    EXPECT_TRUE(run.ok()) << run.status();
    if (!run.ok()) return "";
    EXPECT_EQ(run->exit_code, 0) << args[0];
    return run->out;
  }

  static void Write(const std::string& path, const std::string& contents) {
    std::ofstream(path) << contents;
  }

  static constexpr char kPackageJson[] =
      "{\"name\": \"demo\", \"dependencies\": {\"lodash\": \"4.17.21\"}}\n";
  std::string dir_;
  std::string root_;
  std::vector<std::string> env_;
  std::string blob_sha_;
  std::unique_ptr<TestOrigin> origin_;
};

TEST_F(TestOriginApiTest, DescribesARepository) {
  const Answer a = Call(*origin_, "/api/v3/repos/acme/demo");
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.content_type, "application/json; charset=utf-8");
  EXPECT_EQ(a.Body(), json({{"full_name", "acme/demo"},
                            {"name", "demo"},
                            {"default_branch", "trunk"},
                            {"private", true}}));
}

TEST_F(TestOriginApiTest, ServesAFileAtHeadAsBase64) {
  const Answer a =
      Call(*origin_, "/api/v3/repos/acme/demo/contents/package.json");
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.Body()["type"], "file");
  EXPECT_EQ(a.Body()["name"], "package.json");
  EXPECT_EQ(a.Body()["path"], "package.json");
  EXPECT_EQ(a.Body()["sha"], blob_sha_);
  EXPECT_EQ(a.Body()["size"], std::string(kPackageJson).size());
  EXPECT_EQ(a.Body()["encoding"], "base64");
  std::string decoded;
  ASSERT_TRUE(
      absl::Base64Unescape(a.Body()["content"].get<std::string>(), &decoded));
  EXPECT_EQ(decoded, kPackageJson);
}

TEST_F(TestOriginApiTest, ServesANestedFile) {
  const Answer a =
      Call(*origin_, "/api/v3/repos/acme/demo/contents/docs/guide.md");
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.Body()["name"], "guide.md");
  EXPECT_EQ(a.Body()["path"], "docs/guide.md");
  EXPECT_EQ(a.Body()["size"], 8);
}

TEST_F(TestOriginApiTest, HeadGetsTheHeadOnly) {
  const Answer a = Call(*origin_, "/api/v3/repos/acme/demo", bhttp::verb::head);
  EXPECT_EQ(a.status, 200);
}

TEST_F(TestOriginApiTest, UnknownThingsAreNotFound) {
  for (const char* target : {
           "/api/v3/repos/acme/other",
           "/api/v3/repos/nobody/demo",
           "/api/v3/repos/acme/demo/contents/missing.txt",
           "/api/v3/repos/acme/demo/contents/docs",  // a directory
           "/api/v3/repos/acme/demo/contents/",
           "/api/v3/repos/acme/demo/pulls",
           "/api/v3/repos/acme",
           "/api/v3/user",
       }) {
    const Answer a = Call(*origin_, target);
    EXPECT_EQ(a.status, 404) << target;
    EXPECT_EQ(a.Body(), json({{"message", "Not Found"}})) << target;
  }
  const Answer post =
      Call(*origin_, "/api/v3/repos/acme/demo", bhttp::verb::post);
  EXPECT_EQ(post.status, 404);
}

TEST_F(TestOriginApiTest, RefusesPathTraversal) {
  for (const char* target : {
           "/api/v3/repos/acme/../acme/demo",
           "/api/v3/repos/acme/demo/contents/../../../../etc/passwd",
           "/api/v3/repos/acme/demo/contents/docs/%2e%2e/package.json",
           "/api/v3/repos/acme/demo/contents/%2E%2E%2Fpackage.json",
           "/api/v3/repos/acme/demo/contents/./package.json",
           "/api/v3/repos/acme/demo/contents/a%0Ab",
           "/api/v3/repos/acme/demo/contents/a%zz",
           "/api/v3/../../etc/passwd",
       }) {
    const Answer a = Call(*origin_, target);
    EXPECT_EQ(a.status, 400) << target;
    EXPECT_EQ(a.Body(), json({{"message", "Bad Request"}})) << target;
  }
}

TEST_F(TestOriginApiTest, NoApiWithoutAGitRoot) {
  auto plain = TestOrigin::Start({});
  ASSERT_TRUE(plain.ok()) << plain.status();
  const Answer a = Call(**plain, "/api/v3/repos/acme/demo");
  EXPECT_EQ(a.status, 404);  // "no route", not JSON
  EXPECT_TRUE(a.Body().is_discarded());
}

}  // namespace
}  // namespace broker::testing
