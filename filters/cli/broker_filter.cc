#include "filters/cli/broker_filter.h"

#include "filters/lint.h"
#include "filters/rule_set.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

#include <fstream>
#include <sstream>

namespace broker::filters {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFindings = 1;
constexpr int kExitUsage = 2;

constexpr char kUsage[] =
    "usage: broker-filter check --accept FILE --list private|public "
    "--method M --url URL [--header 'Name: value']... [--body-file FILE]\n"
    "       broker-filter lint [--strict] FILE\n";

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream text;
  text << in.rdbuf();
  *out = text.str();
  return true;
}

// One line, as for every other unusable input.
int Usage(std::ostream& err, absl::string_view problem) {
  err << "broker-filter: " << problem << " (see broker-filter --help)\n";
  return kExitUsage;
}

int Check(const std::vector<std::string>& args, const Variables& variables,
          std::ostream& out, std::ostream& err) {
  std::string accept;
  std::string list_name;
  std::string method;
  std::string url;
  std::string body_file;
  bool have_url = false;
  std::vector<HeaderField> headers;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& flag = args[i];
    if (i + 1 >= args.size()) return Usage(err, flag + " needs a value");
    const std::string& value = args[++i];
    if (flag == "--accept") {
      accept = value;
    } else if (flag == "--list") {
      list_name = value;
    } else if (flag == "--method") {
      method = value;
    } else if (flag == "--url") {
      url = value;
      have_url = true;
    } else if (flag == "--body-file") {
      body_file = value;
    } else if (flag == "--header") {
      size_t colon = value.find(':');
      if (colon == std::string::npos || colon == 0) {
        return Usage(err, "--header takes 'Name: value', got '" + value + "'");
      }
      headers.push_back(
          {std::string(absl::StripAsciiWhitespace(value.substr(0, colon))),
           std::string(absl::StripAsciiWhitespace(value.substr(colon + 1)))});
    } else {
      return Usage(err, "unknown option " + flag);
    }
  }
  if (accept.empty()) return Usage(err, "--accept is required");
  if (list_name != "private" && list_name != "public") {
    return Usage(err, "--list must be private or public");
  }
  if (method.empty()) return Usage(err, "--method is required");
  if (!have_url || url.empty()) return Usage(err, "--url is required");
  std::string body;
  if (!body_file.empty() && !ReadFile(body_file, &body)) {
    err << "broker-filter: cannot read --body-file " << body_file << "\n";
    return kExitUsage;
  }
  absl::StatusOr<std::shared_ptr<const RuleSet>> rules =
      RuleSet::FromFile(accept);
  if (!rules.ok()) {
    err << "broker-filter: " << rules.status().message() << "\n";
    return kExitUsage;
  }
  const RuleList list =
      list_name == "private" ? RuleList::kPrivate : RuleList::kPublic;
  RequestView request{method, url, headers, body};
  Decision decision = (*rules)->Evaluate(list, request);

  nlohmann::ordered_json line = {{"allowed", decision.allowed()},
                                 {"rule_index", nullptr},
                                 {"origin_url", nullptr},
                                 {"auth_header", nullptr},
                                 {"reason", decision.reason}};
  if (decision.allowed()) {
    line["rule_index"] = decision.rule->index;
    if (decision.rule->origin) {
      OriginResolver resolver(variables);
      absl::StatusOr<ForwardTarget> target =
          resolver.Resolve(*decision.rule, url);
      if (target.ok()) {
        line["origin_url"] = target->url;
        if (target->authorization) line["auth_header"] = *target->authorization;
      }
    }
  }
  out << line.dump(-1, ' ', false,
                   nlohmann::ordered_json::error_handler_t::replace)
      << "\n";
  return kExitOk;
}

int LintCommand(const std::vector<std::string>& args, std::ostream& out,
                std::ostream& err) {
  bool strict = false;
  std::string file;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--strict") {
      strict = true;
    } else if (file.empty() && !absl::StartsWith(args[i], "--")) {
      file = args[i];
    } else {
      return Usage(err, "unexpected argument " + args[i]);
    }
  }
  if (file.empty()) return Usage(err, "lint needs a FILE");
  std::string text;
  if (!ReadFile(file, &text)) {
    err << "broker-filter: cannot open " << file << "\n";
    return kExitUsage;
  }
  std::vector<Diagnostic> findings = Lint(text, file);
  int errors = 0;
  int warnings = 0;
  for (const Diagnostic& d : findings) {
    bool is_error = d.severity == Severity::kError;
    (is_error ? errors : warnings)++;
    out << file << ": " << (is_error ? "error: " : "warning: ") << d.ToString()
        << "\n";
  }
  out << file << ": " << errors << (errors == 1 ? " error, " : " errors, ")
      << warnings << (warnings == 1 ? " warning" : " warnings") << "\n";
  if (errors > 0 || (strict && warnings > 0)) return kExitFindings;
  return kExitOk;
}

}  // namespace

int RunBrokerFilter(const std::vector<std::string>& args,
                    const Variables& variables, std::ostream& out,
                    std::ostream& err) {
  if (args.empty()) return Usage(err, "no command");
  if (args[0] == "check") return Check(args, variables, out, err);
  if (args[0] == "lint") return LintCommand(args, out, err);
  if (args[0] == "--help" || args[0] == "help") {
    out << kUsage;
    return kExitOk;
  }
  return Usage(err, "unknown command " + args[0]);
}

}  // namespace broker::filters
