#include "filters/rule_loader.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "yaml-cpp/yaml.h"

#include <string>

namespace broker::filters::internal {
namespace {

using nlohmann::json;

constexpr absl::string_view kMethods[] = {"GET",     "POST", "PUT",     "PATCH",
                                          "DELETE",  "HEAD", "OPTIONS", "TRACE",
                                          "CONNECT", "ANY"};

// 1-based line and column of byte `offset` in `text`.
std::string LineColumn(absl::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line = 1;
  size_t column = 1;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return absl::StrCat("line ", line, ", column ", column);
}

// A YAML scalar with the core schema's types; quoted scalars stay strings.
json YamlScalar(const YAML::Node& node) {
  const std::string& text = node.Scalar();
  if (node.Tag() != "!") {
    if (text == "~" || text == "null" || text == "Null" || text == "NULL") {
      return nullptr;
    }
    if (text == "true" || text == "True" || text == "TRUE") return true;
    if (text == "false" || text == "False" || text == "FALSE") return false;
    int64_t integer = 0;
    if (absl::SimpleAtoi(text, &integer)) return integer;
    double real = 0;
    if (!text.empty() &&
        (absl::ascii_isdigit(static_cast<unsigned char>(text[0])) ||
         text[0] == '-' || text[0] == '.') &&
        absl::SimpleAtod(text, &real)) {
      return real;
    }
  }
  return text;
}

// Aliases can make a small file expand to millions of nodes.
constexpr int kMaxYamlNodes = 200000;

json YamlToJson(const YAML::Node& node, int depth, int* nodes) {
  if (depth > 64) throw YAML::Exception(node.Mark(), "nested too deeply");
  if (++*nodes > kMaxYamlNodes) {
    throw YAML::Exception(node.Mark(),
                          "more than 200000 nodes once aliases are expanded");
  }
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Scalar:
      return YamlScalar(node);
    case YAML::NodeType::Sequence: {
      json out = json::array();
      for (const YAML::Node& item : node)
        out.push_back(YamlToJson(item, depth + 1, nodes));
      return out;
    }
    case YAML::NodeType::Map: {
      json out = json::object();
      for (const auto& item : node) {
        out[item.first.as<std::string>()] =
            YamlToJson(item.second, depth + 1, nodes);
      }
      return out;
    }
  }
  return nullptr;
}

class RuleCompiler {
 public:
  RuleCompiler(RuleList list, int index, std::vector<Diagnostic>* diagnostics)
      : list_(list), index_(index), diagnostics_(diagnostics) {}

  void Error(std::string message) { Add(Severity::kError, std::move(message)); }
  void Warning(std::string message) {
    Add(Severity::kWarning, std::move(message));
  }
  bool failed() const { return failed_; }

  // A string field, or nullopt (with an error when present but not a string).
  std::optional<std::string> String(const json& object, const char* field,
                                    absl::string_view context = "") {
    auto it = object.find(field);
    if (it == object.end() || it->is_null()) return std::nullopt;
    if (!it->is_string()) {
      Error(absl::StrCat(context, "\"", field, "\" must be a string"));
      return std::nullopt;
    }
    return it->get<std::string>();
  }

  std::optional<Glob> CompileGlob(const std::string& pattern,
                                  absl::string_view context) {
    absl::StatusOr<Glob> glob = Glob::Compile(pattern);
    if (!glob.ok()) {
      Error(absl::StrCat(context, glob.status().message()));
      return std::nullopt;
    }
    return *std::move(glob);
  }

  std::vector<std::string> StringList(const json& check, const char* field,
                                      absl::string_view context) {
    std::vector<std::string> out;
    auto it = check.find(field);
    if (it == check.end() || !it->is_array()) {
      Error(
          absl::StrCat(context, "\"", field, "\" must be an array of strings"));
      return out;
    }
    for (const json& value : *it) {
      if (!value.is_string()) {
        Error(absl::StrCat(context, "\"", field, "\" must hold only strings"));
        continue;
      }
      out.push_back(value.get<std::string>());
    }
    return out;
  }

  void CompileCheck(const json& check, size_t n, Rule* rule) {
    std::string context = absl::StrCat("valid[", n, "]: ");
    if (!check.is_object()) {
      Error(context + "must be an object");
      return;
    }
    for (const auto& item : check.items()) {
      const std::string& key = item.key();
      if (key != "//" && key != "path" && key != "value" && key != "regex" &&
          key != "queryParam" && key != "values" && key != "header") {
        Warning(absl::StrCat(context, "unknown field \"", key, "\" (ignored)"));
      }
    }
    if (auto path = String(check, "path", context)) {
      BodyCheck body;
      body.path = absl::StrSplit(*path, '.');
      if (auto regex = String(check, "regex", context)) {
        RE2::Options options;
        options.set_log_errors(false);
        auto re = std::make_shared<RE2>(*regex, options);
        if (!re->ok()) {
          Error(absl::StrCat(context, "invalid regex \"", *regex,
                             "\": ", re->error()));
          return;
        }
        body.regex = std::move(re);
        rule->body_regex_checks.push_back(std::move(body));
        return;
      }
      auto value = check.find("value");
      if (value == check.end()) {
        Error(context + "a body check needs \"value\" or \"regex\"");
        return;
      }
      body.value = *value;
      if (value->is_string() && Glob::HasMagic(value->get<std::string>())) {
        body.value_glob = CompileGlob(value->get<std::string>(), context);
      }
      rule->body_checks.push_back(std::move(body));
      return;
    }
    if (auto param = String(check, "queryParam", context)) {
      QueryCheck query;
      query.name = *param;
      for (const std::string& pattern : StringList(check, "values", context)) {
        if (auto glob = CompileGlob(pattern, context)) {
          query.values.push_back(*std::move(glob));
        }
      }
      rule->query_checks.push_back(std::move(query));
      return;
    }
    if (auto header = String(check, "header", context)) {
      HeaderCheck header_check;
      header_check.name = absl::AsciiStrToLower(*header);
      header_check.values = StringList(check, "values", context);
      rule->header_checks.push_back(std::move(header_check));
      return;
    }
    Error(context +
          "unknown check: expected \"path\" with \"value\" or \"regex\", "
          "\"queryParam\" with \"values\", or \"header\" with \"values\"");
  }

  std::optional<AuthSpec> CompileAuth(const json& auth) {
    if (!auth.is_object()) {
      Error("\"auth\" must be an object");
      return std::nullopt;
    }
    AuthSpec spec;
    std::string scheme =
        absl::AsciiStrToLower(String(auth, "scheme", "auth: ").value_or(""));
    if (scheme == "basic") {
      spec.scheme = AuthSpec::Scheme::kBasic;
    } else if (scheme == "bearer") {
      spec.scheme = AuthSpec::Scheme::kBearer;
    } else if (scheme == "token") {
      spec.scheme = AuthSpec::Scheme::kToken;
    } else if (scheme == "raw") {
      spec.scheme = AuthSpec::Scheme::kRaw;
    } else {
      Error(absl::StrCat("auth: unknown scheme \"", scheme,
                         "\" (expected basic, bearer, token or raw)"));
      return std::nullopt;
    }
    if (auto v = String(auth, "username", "auth: ")) spec.username.emplace(*v);
    if (auto v = String(auth, "password", "auth: ")) spec.password.emplace(*v);
    if (auto v = String(auth, "token", "auth: ")) spec.token.emplace(*v);
    return spec;
  }

 private:
  void Add(Severity severity, std::string message) {
    if (severity == Severity::kError) failed_ = true;
    diagnostics_->push_back(
        {severity, RuleListName(list_), index_, std::move(message)});
  }

  RuleList list_;
  int index_;
  std::vector<Diagnostic>* diagnostics_;
  bool failed_ = false;
};

}  // namespace

absl::StatusOr<json> ParseDocument(absl::string_view text) {
  size_t first = text.find_first_not_of(" \t\r\n");
  if (first == absl::string_view::npos) {
    return absl::InvalidArgumentError("the file is empty");
  }
  if (text[first] == '{' || text[first] == '[') {
    try {
      return json::parse(text.begin(), text.end());
    } catch (const json::out_of_range& e) {
      // A number too large for a double, such as 1e999.
      return absl::InvalidArgumentError(
          absl::StrCat("invalid JSON: ", e.what()));
    } catch (const json::parse_error& e) {
      // nlohmann's message repeats the byte offset; give line and column.
      std::string what = e.what();
      size_t detail = what.find("syntax error");
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid JSON at ", LineColumn(text, e.byte > 0 ? e.byte - 1 : 0),
          ": ", detail == std::string::npos ? what : what.substr(detail)));
    }
  }
  try {
    // yaml-cpp accepts a quoted scalar left open at the very end when a
    // newline follows it; without the trailing white space it reports it.
    YAML::Node node =
        YAML::Load(std::string(absl::StripTrailingAsciiWhitespace(text)));
    int nodes = 0;
    return YamlToJson(node, 0, &nodes);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid YAML at line ", e.mark.line + 1, ", column ",
                     e.mark.column + 1, ": ", e.msg));
  }
}

std::optional<Rule> CompileRule(const json& raw, RuleList list, int index,
                                std::vector<Diagnostic>* diagnostics) {
  RuleCompiler c(list, index, diagnostics);
  if (!raw.is_object()) {
    c.Error(absl::StrCat("a rule must be an object, not ", raw.type_name()));
    return std::nullopt;
  }
  Rule rule;
  rule.list = list;
  rule.index = index;
  rule.source = raw;

  for (const auto& item : raw.items()) {
    const std::string& key = item.key();
    if (key != "//" && key != "method" && key != "path" && key != "origin" &&
        key != "auth" && key != "valid" && key != "stream") {
      c.Warning(absl::StrCat("unknown field \"", key, "\" (ignored)"));
    }
  }

  std::string method =
      absl::AsciiStrToUpper(c.String(raw, "method").value_or("GET"));
  if (std::find(std::begin(kMethods), std::end(kMethods), method) ==
      std::end(kMethods)) {
    c.Error(absl::StrCat("unknown method \"", method, "\" (expected ",
                         absl::StrJoin(kMethods, ", "), ")"));
  }
  rule.method = method;

  if (!raw.contains("path")) {
    c.Warning("no \"path\": the rule matches only \"/\"");
  }
  std::string path = c.String(raw, "path").value_or("");
  absl::StatusOr<PathPattern> pattern = PathPattern::Compile(path);
  if (!pattern.ok()) {
    c.Error(std::string(pattern.status().message()));
  }

  if (auto origin = c.String(raw, "origin")) rule.origin.emplace(*origin);
  if (auto auth = raw.find("auth"); auth != raw.end() && !auth->is_null()) {
    rule.auth = c.CompileAuth(*auth);
  }
  if (auto valid = raw.find("valid"); valid != raw.end() && !valid->is_null()) {
    if (!valid->is_array()) {
      c.Error("\"valid\" must be an array");
    } else {
      for (size_t n = 0; n < valid->size(); ++n) {
        c.CompileCheck((*valid)[n], n, &rule);
      }
    }
  }
  if (c.failed() || !pattern.ok()) return std::nullopt;
  rule.path = *std::move(pattern);
  return rule;
}

}  // namespace broker::filters::internal
