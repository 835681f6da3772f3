//! Subjects, subject patterns and the routing index.
//!
//! A subject is 1–255 characters: tokens of `[A-Za-z0-9_-]+` separated by single dots,
//! compared case-sensitively. A pattern has the same shape, except that a token may be `*`
//! (exactly one token) and the last token may be `>` (one or more tokens), as in NATS:
//! `order.>` matches `order.created` and `order.item.added` but not `order`.
//!
//! Consumers select events with a [`Filter`] (include patterns minus exclude patterns).
//! The drain routes every event through a [`Router`], a token trie over all the filters of
//! a stream, so the cost of routing grows with the length of a subject, not with the
//! number of consumers. Log consumers read with a SQL regular expression produced by
//! [`Filter::include_regex`] / [`Filter::exclude_regex`], which Postgres compiles once per
//! query.

use super::Invalid;

pub const MAX_SUBJECT_LEN: usize = 255;

/// How many patterns one list (a consumer's subjects or excludes, a grant's subjects) may
/// have. Log readers and the views match subjects against a regular expression built
/// from a list, and Postgres refuses one that grows too complex.
pub const MAX_PATTERNS: usize = 100;

/// A list of patterns as a caller gave it: no NULL, at most [`MAX_PATTERNS`].
pub fn pattern_list(list: Vec<Option<String>>, what: &str) -> Result<Vec<String>, Invalid> {
    if list.len() > MAX_PATTERNS {
        return Err(Invalid(format!("{what} may list at most {MAX_PATTERNS} patterns")));
    }
    list.into_iter()
        .map(|p| p.ok_or_else(|| Invalid(format!("{what} must not contain NULL"))))
        .collect()
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn is_literal_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(is_token_byte)
}

fn check_length(what: &str, text: &str) -> Result<(), Invalid> {
    if text.is_empty() || text.len() > MAX_SUBJECT_LEN {
        return Err(Invalid(format!(
            "invalid {what} \"{}\": must be 1 to {MAX_SUBJECT_LEN} characters",
            super::shown(text)
        )));
    }
    Ok(())
}

pub fn validate_subject(subject: &str) -> Result<(), Invalid> {
    check_length("subject", subject)?;
    if subject.split('.').all(is_literal_token) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "invalid subject \"{}\": expected tokens of A-Z, a-z, 0-9, _ and - separated by single dots",
            super::shown(subject)
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens; only ever the last token.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, Invalid> {
        check_length("subject pattern", text)?;
        let parts: Vec<&str> = text.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "*" => Token::One,
                ">" if i + 1 == parts.len() => Token::Rest,
                ">" => {
                    return Err(Invalid(format!(
                        "invalid subject pattern \"{}\": \">\" may only be the last token",
                        super::shown(text)
                    )))
                }
                literal if is_literal_token(literal) => Token::Literal(literal.to_string()),
                _ => {
                    return Err(Invalid(format!(
                        "invalid subject pattern \"{}\": expected tokens of A-Z, a-z, 0-9, _ and -, \"*\" or a final \">\", separated by single dots",
                        super::shown(text)
                    )))
                }
            };
            tokens.push(token);
        }
        Ok(Pattern { text: text.to_string(), tokens })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether every subject `inner` matches, this pattern matches too.
    ///
    /// Token by token: a literal is within itself and within `*`; `*` only within `*`. A
    /// trailing `>` here takes whatever `inner` has from there on, as long as it has at
    /// least one more token (its own `>` counts as one); without a trailing `>` here,
    /// `inner` must have the same number of tokens and no `>`. Exact, not approximate: when
    /// it says no, there is a subject `inner` matches and this pattern does not (the tests
    /// build one).
    pub fn contains(&self, inner: &Pattern) -> bool {
        let token_within = |inner: &Token, outer: &Token| match (inner, outer) {
            (_, Token::One) => !matches!(inner, Token::Rest),
            (Token::Literal(a), Token::Literal(b)) => a == b,
            _ => false,
        };
        match self.tokens.split_last() {
            Some((Token::Rest, prefix)) => {
                inner.tokens.len() > prefix.len()
                    && prefix.iter().zip(&inner.tokens).all(|(o, i)| token_within(i, o))
            }
            _ => {
                inner.tokens.len() == self.tokens.len()
                    && self.tokens.iter().zip(&inner.tokens).all(|(o, i)| token_within(i, o))
            }
        }
    }

    /// Whether this pattern matches every valid subject (`>`).
    pub fn matches_everything(&self) -> bool {
        self.tokens == [Token::Rest]
    }

    /// `subject` must be valid (see [`validate_subject`]).
    pub fn matches(&self, subject: &str) -> bool {
        let mut remaining = subject.split('.');
        for token in &self.tokens {
            match token {
                Token::Rest => return remaining.next().is_some(),
                Token::One => {
                    if remaining.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(lit) => {
                    if remaining.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        remaining.next().is_none()
    }

    /// A POSIX (Postgres ARE) regular expression, without anchors, matching exactly the
    /// subjects this pattern matches. Literal tokens need no escaping: their alphabet has no
    /// regex metacharacters.
    fn regex_body(&self) -> String {
        let mut out = String::new();
        for (i, token) in self.tokens.iter().enumerate() {
            if i > 0 {
                out.push_str("\\.");
            }
            match token {
                Token::Literal(lit) => out.push_str(lit),
                Token::One => out.push_str("[^.]+"),
                Token::Rest => out.push_str(".+"),
            }
        }
        out
    }
}

/// Validates a subject and a pattern and tells whether one matches the other.
pub fn subject_matches(pattern: &str, subject: &str) -> Result<bool, Invalid> {
    let pattern = Pattern::parse(pattern)?;
    validate_subject(subject)?;
    Ok(pattern.matches(subject))
}

/// Which subjects a consumer receives: any include pattern and no exclude pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub include: Vec<Pattern>,
    pub exclude: Vec<Pattern>,
}

impl Filter {
    pub fn parse<I, E, S1, S2>(include: I, exclude: E) -> Result<Filter, Invalid>
    where
        I: IntoIterator<Item = S1>,
        E: IntoIterator<Item = S2>,
        S1: AsRef<str>,
        S2: AsRef<str>,
    {
        let include = include
            .into_iter()
            .map(|p| Pattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let exclude = exclude
            .into_iter()
            .map(|p| Pattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if include.is_empty() {
            return Err(Invalid::new(
                "subjects must list at least one pattern (use '{>}' for every subject)",
            ));
        }
        Ok(Filter { include, exclude })
    }

    /// The reference meaning of a filter; the router and the regexes are tested against it.
    #[cfg(test)]
    pub fn matches(&self, subject: &str) -> bool {
        self.include.iter().any(|p| p.matches(subject))
            && !self.exclude.iter().any(|p| p.matches(subject))
    }

    /// Anchored regex for the include list; `None` when it matches every subject.
    pub fn include_regex(&self) -> Option<String> {
        if self.include.iter().any(Pattern::matches_everything) {
            None
        } else {
            Some(alternation(&self.include))
        }
    }

    /// Anchored regex for the exclude list; `None` when nothing is excluded.
    pub fn exclude_regex(&self) -> Option<String> {
        if self.exclude.is_empty() {
            None
        } else {
            Some(alternation(&self.exclude))
        }
    }
}

fn alternation(patterns: &[Pattern]) -> String {
    let bodies: Vec<String> = patterns.iter().map(Pattern::regex_body).collect();
    format!("^(?:{})$", bodies.join("|"))
}

/// A token trie over the filters of many consumers. `route` returns, for one subject, the
/// indexes of the filters that accept it, in ascending order.
#[derive(Debug, Default)]
pub struct Router {
    include: Node,
    exclude: Node,
    filters: usize,
}

#[derive(Debug, Default)]
struct Node {
    literal: std::collections::HashMap<String, Node>,
    one: Option<Box<Node>>,
    /// Filters whose pattern ends here with `>`.
    rest: Vec<usize>,
    /// Filters whose pattern ends exactly here.
    end: Vec<usize>,
}

impl Node {
    fn insert(&mut self, pattern: &Pattern, filter: usize) {
        let mut node = self;
        for token in &pattern.tokens {
            match token {
                Token::Literal(lit) => node = node.literal.entry(lit.clone()).or_default(),
                Token::One => node = node.one.get_or_insert_with(Default::default),
                Token::Rest => {
                    node.rest.push(filter);
                    return;
                }
            }
        }
        node.end.push(filter);
    }

    fn collect(&self, tokens: &[&str], hits: &mut [bool]) {
        match tokens.split_first() {
            None => self.end.iter().for_each(|&f| hits[f] = true),
            Some((first, rest)) => {
                self.rest.iter().for_each(|&f| hits[f] = true);
                if let Some(child) = self.literal.get(*first) {
                    child.collect(rest, hits);
                }
                if let Some(child) = &self.one {
                    child.collect(rest, hits);
                }
            }
        }
    }
}

impl Router {
    /// Adds a filter and returns its index.
    pub fn add(&mut self, filter: &Filter) -> usize {
        let index = self.filters;
        self.filters += 1;
        for p in &filter.include {
            self.include.insert(p, index);
        }
        for p in &filter.exclude {
            self.exclude.insert(p, index);
        }
        index
    }

    pub fn is_empty(&self) -> bool {
        self.filters == 0
    }

    /// `subject` must be valid. Appends the accepting filter indexes to `out`.
    pub fn route(&self, subject: &str, out: &mut Vec<usize>) {
        if self.filters == 0 {
            return;
        }
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut included = vec![false; self.filters];
        self.include.collect(&tokens, &mut included);
        let mut excluded = vec![false; self.filters];
        self.exclude.collect(&tokens, &mut excluded);
        out.extend((0..self.filters).filter(|&f| included[f] && !excluded[f]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        subject_matches(p, s).unwrap()
    }

    #[test]
    fn subjects_follow_the_grammar() {
        for ok in ["order", "order.created", "v1.order-item.added_2", "A.b.C", &"a".repeat(255)] {
            validate_subject(ok).unwrap();
        }
        for bad in [
            "",
            ".order",
            "order.",
            "order..created",
            "order created",
            "order.*",
            "order.>",
            "ordér",
            &"a".repeat(256),
        ] {
            assert!(validate_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_follow_the_grammar() {
        for ok in [">", "*", "order.*", "order.>", "*.created", "*.*.>", "a-b.c_d"] {
            Pattern::parse(ok).unwrap();
        }
        for bad in ["", "order.>.created", ">.x", "order*", "order.*x", "a..b", "a.", "**", ">>"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn literal_patterns_match_exactly_and_case_sensitively() {
        assert!(m("order.created", "order.created"));
        assert!(!m("order.created", "order.Created"));
        assert!(!m("order.created", "order.created.v2"));
        assert!(!m("order.created", "order"));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(m("order.*", "order.created"));
        assert!(!m("order.*", "order"));
        assert!(!m("order.*", "order.item.added"));
        assert!(m("*.created", "order.created"));
        assert!(m("*", "order"));
        assert!(!m("*", "order.created"));
    }

    #[test]
    fn rest_matches_one_or_more_trailing_tokens() {
        assert!(m("order.>", "order.created"));
        assert!(m("order.>", "order.item.added"));
        assert!(!m("order.>", "order"));
        assert!(!m("order.>", "orders.created"));
        assert!(m(">", "order"));
        assert!(m(">", "a.b.c"));
        assert!(m("*.>", "a.b"));
        assert!(!m("*.>", "a"));
    }

    #[test]
    fn invalid_inputs_are_errors_not_false() {
        assert!(subject_matches("order.>.x", "order.a.x").is_err());
        assert!(subject_matches("order.*", "order..x").is_err());
    }

    #[test]
    fn filters_subtract_excludes() {
        let f = Filter::parse(["order.>"], ["order.internal.>"]).unwrap();
        assert!(f.matches("order.created"));
        assert!(!f.matches("order.internal.audit"));
        assert!(!f.matches("payment.created"));
        assert!(Filter::parse(Vec::<&str>::new(), Vec::<&str>::new()).is_err());
    }

    #[test]
    fn regexes_are_omitted_when_they_would_filter_nothing() {
        let all = Filter::parse([">"], Vec::<&str>::new()).unwrap();
        assert_eq!(all.include_regex(), None);
        assert_eq!(all.exclude_regex(), None);
        let some = Filter::parse(["order.*", "payment.>"], ["order.deleted"]).unwrap();
        assert_eq!(some.include_regex().unwrap(), "^(?:order\\.[^.]+|payment\\..+)$");
        assert_eq!(some.exclude_regex().unwrap(), "^(?:order\\.deleted)$");
    }

    /// Deterministic pseudo-random subjects and patterns over a tiny alphabet, so that
    /// matches are frequent.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
        fn subject(&mut self) -> String {
            let len = 1 + self.next(4);
            (0..len).map(|_| ["a", "b", "c-d"][self.next(3) as usize]).collect::<Vec<_>>().join(".")
        }
        fn pattern(&mut self) -> String {
            let len = 1 + self.next(4);
            let mut toks: Vec<&str> =
                (0..len).map(|_| ["a", "b", "c-d", "*"][self.next(4) as usize]).collect();
            if self.next(3) == 0 {
                *toks.last_mut().unwrap() = ">";
            }
            toks.join(".")
        }
    }

    #[test]
    fn regex_agrees_with_the_matcher() {
        let mut rng = Lcg(7);
        for _ in 0..300 {
            let include: Vec<String> = (0..1 + rng.next(3)).map(|_| rng.pattern()).collect();
            let exclude: Vec<String> = (0..rng.next(2)).map(|_| rng.pattern()).collect();
            let f = Filter::parse(&include, &exclude).unwrap();
            let inc = f.include_regex().map(|r| regex::Regex::new(&r).unwrap());
            let exc = f.exclude_regex().map(|r| regex::Regex::new(&r).unwrap());
            for _ in 0..30 {
                let s = rng.subject();
                let by_regex = inc.as_ref().is_none_or(|r| r.is_match(&s))
                    && !exc.as_ref().is_some_and(|r| r.is_match(&s));
                assert_eq!(by_regex, f.matches(&s), "{include:?} - {exclude:?} on {s}");
            }
        }
    }

    #[test]
    fn router_agrees_with_each_filter() {
        let mut rng = Lcg(11);
        for _ in 0..50 {
            let filters: Vec<Filter> = (0..1 + rng.next(12))
                .map(|_| {
                    let inc: Vec<String> = (0..1 + rng.next(3)).map(|_| rng.pattern()).collect();
                    let exc: Vec<String> = (0..rng.next(2)).map(|_| rng.pattern()).collect();
                    Filter::parse(&inc, &exc).unwrap()
                })
                .collect();
            let mut router = Router::default();
            for f in &filters {
                router.add(f);
            }
            for _ in 0..50 {
                let s = rng.subject();
                let mut routed = Vec::new();
                router.route(&s, &mut routed);
                let expected: Vec<usize> =
                    (0..filters.len()).filter(|&i| filters[i].matches(&s)).collect();
                assert_eq!(routed, expected, "subject {s}");
            }
        }
    }

    #[test]
    fn router_reports_a_filter_once_even_when_several_patterns_match() {
        let mut router = Router::default();
        router
            .add(&Filter::parse(["order.*", "order.>", "*.created"], Vec::<&str>::new()).unwrap());
        let mut out = Vec::new();
        router.route("order.created", &mut out);
        assert_eq!(out, vec![0]);
    }

    #[test]
    fn containment_follows_the_tokens() {
        let within = |outer: &str, inner: &str| {
            Pattern::parse(outer).unwrap().contains(&Pattern::parse(inner).unwrap())
        };
        assert!(within(">", "a"));
        assert!(within(">", "*.>"));
        assert!(within("a.>", "a.b.>"));
        assert!(within("a.>", "a.*"));
        assert!(within("a.*", "a.b"));
        assert!(within("*.*", "a.*"));
        assert!(within("a.*.>", "a.b.c"));
        assert!(!within("a.>", "a"));
        assert!(!within("a.>", ">"));
        assert!(!within("a.*", "a.>"));
        assert!(!within("a.b", "a.*"));
        assert!(!within("a.*", "a.b.c"));
        assert!(!within("*", ">"));
        assert!(!within("a.b.>", "a.>"));
    }

    /// Subjects `inner` matches, built so that if `outer` does not contain `inner`, one of
    /// them is outside `outer`: `*` and `>` become a token no pattern here uses, `>` in
    /// every length up to one past `outer`'s.
    fn witnesses(inner: &Pattern, outer: &Pattern) -> Vec<String> {
        const FRESH: &str = "zz";
        let (rest, fixed) = match inner.tokens.split_last() {
            Some((Token::Rest, fixed)) => (true, fixed),
            _ => (false, &inner.tokens[..]),
        };
        let prefix: Vec<&str> = fixed
            .iter()
            .map(|t| match t {
                Token::Literal(l) => l.as_str(),
                _ => FRESH,
            })
            .collect();
        if !rest {
            return vec![prefix.join(".")];
        }
        (1..=outer.tokens.len() + 1)
            .map(|extra| {
                let mut tokens = prefix.clone();
                tokens.extend(std::iter::repeat_n(FRESH, extra));
                tokens.join(".")
            })
            .collect()
    }

    /// Inputs that have broken parsers elsewhere, kept so every run tries them again
    /// (one per line; `\n`, `\t`, `\0` and `\\` are unescaped, a line `<long:N:text>` is
    /// text repeated N times).
    const HOSTILE_INPUTS: &str = include_str!("hostile_inputs.txt");

    fn hostile_inputs() -> Vec<String> {
        HOSTILE_INPUTS
            .lines()
            .map(|line| {
                if let Some(spec) = line.strip_prefix("<long:").and_then(|l| l.strip_suffix('>')) {
                    let (n, text) = spec.split_once(':').unwrap();
                    return text.repeat(n.parse().unwrap());
                }
                line.replace("\\n", "\n")
                    .replace("\\t", "\t")
                    .replace("\\0", "\0")
                    .replace("\\\\", "\\")
            })
            .collect()
    }

    #[test]
    fn hostile_inputs_are_refused_or_understood_never_a_panic() {
        let inputs = hostile_inputs();
        assert!(inputs.len() > 30);
        let mut patterns = Vec::new();
        for input in &inputs {
            let subject_ok = validate_subject(input).is_ok();
            let name_ok = crate::core::names::is_valid_name(input);
            if let Ok(p) = Pattern::parse(input) {
                assert_eq!(p.as_str(), input);
                patterns.push(p);
            }
            if let Err(e) = validate_subject(input) {
                assert!(e.0.len() < 400, "an error quotes at most a prefix: {} bytes", e.0.len());
            }
            // a subject is also a pattern (of itself), and names are subjects
            if subject_ok {
                assert!(Pattern::parse(input).unwrap().matches(input));
            }
            if name_ok {
                assert!(subject_ok);
            }
            let _ = subject_matches(input, input);
            let _ = crate::core::scope::Scope::parse(&[input]);
        }
        for outer in &patterns {
            for inner in &patterns {
                let contained = outer.contains(inner);
                for w in witnesses(inner, outer) {
                    assert!(inner.matches(&w), "{w} from {}", inner.as_str());
                    if contained {
                        assert!(
                            outer.matches(&w),
                            "{} contains {}, not {w}",
                            outer.as_str(),
                            inner.as_str()
                        );
                    }
                }
            }
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn token() -> impl Strategy<Value = &'static str> {
            prop_oneof![Just("a"), Just("b"), Just("c-d"), Just("*")]
        }

        /// Patterns over a tiny alphabet, so that containment is often true and often false.
        fn pattern() -> impl Strategy<Value = Pattern> {
            (prop::collection::vec(token(), 1..5), any::<bool>()).prop_map(|(mut tokens, rest)| {
                if rest {
                    *tokens.last_mut().unwrap() = ">";
                }
                Pattern::parse(&tokens.join(".")).unwrap()
            })
        }

        fn subject() -> impl Strategy<Value = String> {
            prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c-d"), Just("zz")], 1..7)
                .prop_map(|tokens| tokens.join("."))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn parsers_never_panic(text in "\\PC{0,300}") {
                let _ = validate_subject(&text);
                let _ = Pattern::parse(&text);
                let _ = crate::core::names::validate_name(crate::core::names::Kind::Stream, &text);
                let _ = crate::core::scope::Scope::parse(&[&text]);
            }

            #[test]
            fn parsers_never_panic_on_almost_valid_text(text in "[ab*>._\\- ]{0,40}") {
                match Pattern::parse(&text) {
                    Ok(p) => {
                        prop_assert_eq!(p.as_str(), text.as_str());
                        prop_assert!(p.tokens.iter().rev().skip(1).all(|t| *t != Token::Rest));
                    }
                    Err(e) => prop_assert!(e.0.contains("invalid subject pattern")),
                }
                if validate_subject(&text).is_ok() {
                    prop_assert!(Pattern::parse(&text).unwrap().matches(&text));
                }
            }

            /// What an inner pattern matches, a containing pattern matches too.
            #[test]
            fn containment_is_sound(outer in pattern(), inner in pattern(), s in subject()) {
                if outer.contains(&inner) && inner.matches(&s) {
                    prop_assert!(outer.matches(&s), "{} contains {} but not {}", outer.as_str(), inner.as_str(), s);
                }
            }

            /// When containment says no, there is a subject that proves it.
            #[test]
            fn containment_is_complete(outer in pattern(), inner in pattern()) {
                let ws = witnesses(&inner, &outer);
                prop_assert!(ws.iter().all(|w| inner.matches(w)));
                let escapes = ws.iter().any(|w| !outer.matches(w));
                prop_assert_eq!(outer.contains(&inner), !escapes, "{} vs {}", outer.as_str(), inner.as_str());
            }

            #[test]
            fn containment_is_a_preorder(a in pattern(), b in pattern(), c in pattern()) {
                prop_assert!(a.contains(&a));
                if a.contains(&b) && b.contains(&c) {
                    prop_assert!(a.contains(&c));
                }
            }

            #[test]
            fn the_router_agrees_with_the_matcher(p in pattern(), s in subject()) {
                let filter = Filter { include: vec![p.clone()], exclude: vec![] };
                let mut router = Router::default();
                router.add(&filter);
                let mut hits = Vec::new();
                router.route(&s, &mut hits);
                prop_assert_eq!(!hits.is_empty(), p.matches(&s));
            }
        }
    }
}
