#include "filters/rule_set.h"

#include "filters/query_string.h"
#include "filters/rule_loader.h"
#include "filters/url_checks.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "openssl/sha.h"

#include <fstream>
#include <sstream>

namespace broker::filters {
namespace {

using nlohmann::json;

// Memory for the lazily built DFA of one list's RE2::Set. When a hostile
// stream of paths exhausts it, evaluation falls back to one RE2 per rule.
constexpr int64_t kPathSetMaxMemory = 64 << 20;

std::string Sha256Hex(absl::string_view text) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(),
         digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

// Keeps reasons one readable line even for a hostile 1 MiB path.
std::string Abbreviate(absl::string_view text) {
  constexpr size_t kMax = 256;
  if (text.size() <= kMax) return std::string(text);
  return absl::StrCat(text.substr(0, kMax), "... (", text.size(), " bytes)");
}

// Collects the values at a dot-separated path; "*" visits every element of
// an array or object, a number indexes an array.
void CollectAtPath(const json& node, const std::vector<std::string>& path,
                   size_t depth, std::vector<const json*>* out) {
  if (depth == path.size()) {
    out->push_back(&node);
    return;
  }
  const std::string& key = path[depth];
  if (key == "*") {
    if (node.is_array() || node.is_object()) {
      for (const json& child : node) CollectAtPath(child, path, depth + 1, out);
    }
    return;
  }
  if (node.is_object()) {
    auto it = node.find(key);
    if (it != node.end()) CollectAtPath(*it, path, depth + 1, out);
  } else if (node.is_array()) {
    size_t index = 0;
    if (absl::SimpleAtoi(key, &index) && index < node.size()) {
      CollectAtPath(node[index], path, depth + 1, out);
    }
  }
}

// The JSON body, parsed at most once per evaluation and only if a rule
// needs it.
class LazyBody {
 public:
  explicit LazyBody(absl::string_view text) : text_(text) {}

  const json* Get() {
    if (!parsed_) {
      parsed_ = true;
      document_ = json::parse(text_.begin(), text_.end(), nullptr,
                              /*allow_exceptions=*/false);
    }
    return document_.is_discarded() ? nullptr : &document_;
  }

 private:
  absl::string_view text_;
  bool parsed_ = false;
  json document_;
};

bool BodyCheckPasses(const BodyCheck& check, const json& body) {
  std::vector<const json*> found;
  CollectAtPath(body, check.path, 0, &found);
  for (const json* value : found) {
    if (check.regex) {
      if (value->is_string() &&
          RE2::PartialMatch(value->get_ref<const std::string&>(),
                            *check.regex)) {
        return true;
      }
      continue;
    }
    if (check.value_glob) {
      if (value->is_string() &&
          check.value_glob->Matches(value->get_ref<const std::string&>())) {
        return true;
      }
      continue;
    }
    if (*value == *check.value) return true;
  }
  return false;
}

bool HeaderCheckPasses(const HeaderCheck& check,
                       absl::Span<const HeaderField> headers) {
  const HeaderField* found = nullptr;
  for (const HeaderField& header : headers) {
    if (!absl::EqualsIgnoreCase(header.name, check.name)) continue;
    if (found != nullptr) return false;  // sent twice: which one counts?
    found = &header;
  }
  if (found == nullptr) return false;
  return std::find(check.values.begin(), check.values.end(), found->value) !=
         check.values.end();
}

}  // namespace

const char* RuleListName(RuleList list) {
  return list == RuleList::kPrivate ? "private" : "public";
}

std::string Rule::Label() const {
  return absl::StrCat(RuleListName(list), "[", index, "]");
}

RuleSet::~RuleSet() = default;

LoadResult RuleSet::Parse(absl::string_view text,
                          absl::string_view /*source_name*/) {
  LoadResult result;
  absl::StatusOr<json> document = internal::ParseDocument(text);
  if (!document.ok()) {
    result.diagnostics.push_back(
        {Severity::kError, "", -1, std::string(document.status().message())});
    return result;
  }
  if (!document->is_object()) {
    result.diagnostics.push_back(
        {Severity::kError, "", -1,
         absl::StrCat("the file must hold an object with \"private\" and "
                      "\"public\" lists, not ",
                      document->type_name())});
    return result;
  }
  auto rule_set = std::shared_ptr<RuleSet>(new RuleSet());
  rule_set->source_ = *document;
  rule_set->digest_ = Sha256Hex(text);

  for (const auto& item : document->items()) {
    const std::string& key = item.key();
    if (key != "private" && key != "public" && key != "//") {
      result.diagnostics.push_back(
          {Severity::kWarning, "", -1,
           absl::StrCat("unknown top-level field \"", key, "\" (ignored)")});
    }
  }

  for (RuleList list : {RuleList::kPrivate, RuleList::kPublic}) {
    CompiledList& compiled =
        list == RuleList::kPrivate ? rule_set->private_ : rule_set->public_;
    auto it = document->find(RuleListName(list));
    if (it == document->end() || it->is_null()) continue;
    if (!it->is_array()) {
      result.diagnostics.push_back({Severity::kError, RuleListName(list), -1,
                                    "must be an array of rules"});
      continue;
    }
    for (size_t i = 0; i < it->size(); ++i) {
      std::optional<Rule> rule = internal::CompileRule(
          (*it)[i], list, static_cast<int>(i), &result.diagnostics);
      if (rule) {
        compiled.has_body_checks = compiled.has_body_checks ||
                                   !rule->body_checks.empty() ||
                                   !rule->body_regex_checks.empty();
        compiled.rules.push_back(*std::move(rule));
      }
    }
    if (compiled.rules.empty()) continue;
    RE2::Options options = PathPatternOptions();
    options.set_max_mem(kPathSetMaxMemory);
    compiled.paths = std::make_unique<RE2::Set>(options, RE2::ANCHOR_BOTH);
    for (const Rule& rule : compiled.rules) {
      std::string error;
      if (compiled.paths->Add(rule.path.regex(), &error) < 0) {
        // Cannot happen: the same regex compiled alone a moment ago.
        result.diagnostics.push_back(
            {Severity::kError, RuleListName(list), rule.index, error});
      }
    }
    if (compiled.paths->Compile()) {
      // Build the DFA's start states now, not on the first request.
      std::vector<int> ignored;
      compiled.paths->Match("/", &ignored);
    } else {
      compiled.paths.reset();
    }
  }

  if (HasErrors(result.diagnostics)) return result;
  for (const Diagnostic& d : result.diagnostics) {
    rule_set->warnings_.push_back(d);
  }
  result.rule_set = std::move(rule_set);
  return result;
}

absl::StatusOr<std::shared_ptr<const RuleSet>> RuleSet::FromText(
    absl::string_view text, absl::string_view source_name) {
  LoadResult result = Parse(text, source_name);
  if (result.rule_set) return result.rule_set;
  std::vector<std::string> errors;
  for (const Diagnostic& d : result.diagnostics) {
    if (d.severity == Severity::kError) errors.push_back(d.ToString());
  }
  return absl::InvalidArgumentError(
      absl::StrCat(source_name, ": ", absl::StrJoin(errors, "; ")));
}

absl::StatusOr<std::shared_ptr<const RuleSet>> RuleSet::FromFile(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open the accept rules file"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return FromText(text.str(), path);
}

Decision RuleSet::Evaluate(RuleList list, const RequestView& request) const {
  return EvaluateList(list, list == RuleList::kPrivate ? private_ : public_,
                      request);
}

std::vector<int> RuleSet::MatchingPaths(const CompiledList& list,
                                        absl::string_view path) {
  std::vector<int> candidates;
  bool matched_by_set = false;
  if (list.paths != nullptr) {
    RE2::Set::ErrorInfo error;
    matched_by_set =
        list.paths->Match(re2::StringPiece(path.data(), path.size()),
                          &candidates, &error) ||
        error.kind == RE2::Set::kNoError;
    std::sort(candidates.begin(), candidates.end());
  }
  if (!matched_by_set) {
    candidates.clear();
    for (size_t i = 0; i < list.rules.size(); ++i) {
      if (list.rules[i].path.Matches(path)) {
        candidates.push_back(static_cast<int>(i));
      }
    }
  }
  return candidates;
}

bool RuleSet::NeedsBody(RuleList list, absl::string_view method,
                        absl::string_view url) const {
  const CompiledList& compiled =
      list == RuleList::kPrivate ? private_ : public_;
  if (!compiled.has_body_checks) return false;
  for (int i : MatchingPaths(compiled, SplitRequestTarget(url).path)) {
    const Rule& rule = compiled.rules[i];
    if ((rule.body_checks.empty() && rule.body_regex_checks.empty()) ||
        (!rule.AnyMethod() && !absl::EqualsIgnoreCase(rule.method, method))) {
      continue;
    }
    return true;
  }
  return false;
}

Decision RuleSet::EvaluateList(RuleList which, const CompiledList& list,
                               const RequestView& request) {
  Decision decision;
  const SplitUrl url = SplitRequestTarget(request.url);
  if (NormalizationWouldChange(url.path)) {
    decision.cause = BlockCause::kNotNormalized;
    decision.reason =
        "the path is not normalised (it has a \"//\", \".\" or \"..\" segment)";
    return decision;
  }
  if (std::optional<std::string> traversal = FindPathTraversal(url.path)) {
    decision.cause = BlockCause::kPathTraversal;
    decision.reason = absl::StrCat("path traversal: ", *traversal);
    return decision;
  }

  // Candidate rules, in file order, whose path matches.
  const std::vector<int> candidates = MatchingPaths(list, url.path);

  LazyBody body(request.body);
  std::optional<QueryParams> query;
  for (int i : candidates) {
    const Rule& rule = list.rules[i];
    if (!rule.AnyMethod() &&
        !absl::EqualsIgnoreCase(rule.method, request.method)) {
      continue;
    }
    if (rule.HasValidity()) {
      bool valid = false;
      if (!rule.body_checks.empty() || !rule.body_regex_checks.empty()) {
        if (const json* document = body.Get()) {
          for (const BodyCheck& check : rule.body_checks) {
            if ((valid = BodyCheckPasses(check, *document))) break;
          }
          if (!valid) {
            for (const BodyCheck& check : rule.body_regex_checks) {
              if ((valid = BodyCheckPasses(check, *document))) break;
            }
          }
        }
      }
      if (!valid && !rule.query_checks.empty()) {
        if (!query) query = ParseQueryString(url.query);
        valid = true;
        for (const QueryCheck& check : rule.query_checks) {
          auto it = query->find(check.name);
          if (it != query->end() &&
              (it->second.count > 1 || it->second.structured)) {
            // Snyk throws here and blocks the request; we block on purpose.
            decision.cause = BlockCause::kRepeatedQueryParameter;
            decision.reason = absl::StrCat(
                "query parameter \"", check.name, "\" checked by ",
                rule.Label(), " was sent more than once or with brackets");
            return decision;
          }
          const std::string empty;
          const std::string& value =
              it == query->end() ? empty : it->second.value;
          bool any = false;
          for (const Glob& glob : check.values) {
            if ((any = glob.Matches(value))) break;
          }
          if (!any) {
            valid = false;
            break;
          }
        }
      }
      if (!valid) continue;
    }
    bool headers_ok = true;
    for (const HeaderCheck& check : rule.header_checks) {
      if (!(headers_ok = HeaderCheckPasses(check, request.headers))) break;
    }
    if (!headers_ok) continue;
    decision.rule = &rule;
    decision.cause = BlockCause::kNone;
    decision.reason = absl::StrCat("allowed by ", rule.Label());
    return decision;
  }
  decision.cause = BlockCause::kNoMatchingRule;
  decision.reason = absl::StrCat("no ", RuleListName(which), " rule allows ",
                                 request.method, " ", Abbreviate(url.path));
  return decision;
}

}  // namespace broker::filters
