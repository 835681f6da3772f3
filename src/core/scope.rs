//! Subject scopes of grants. `grant('consume', stream, role, subjects)` limits a role to
//! consumers that select nothing outside `subjects`; `grant('publish', ...)` with subjects
//! limits what it may publish. The open platform's in-house app gets `{seller.42.>}` and can
//! subscribe to `seller.42.order.*`, never to `seller.*.order.*`.
//!
//! A consumer is within a scope when each of its include patterns lies within one of the
//! scope's patterns ([`Pattern::contains`]). Exclude patterns are not credited: a filter
//! that only subtracts its way into the scope is refused, which errs on the safe side.

use super::subject::{Filter, Pattern, MAX_PATTERNS};
use super::Invalid;

/// The subjects one or more grants cover; `None` where they cover everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    patterns: Vec<Pattern>,
}

impl Scope {
    /// A grant's `subjects`: at least one pattern, each valid.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Scope, Invalid> {
        if list.is_empty() {
            return Err(Invalid::new(
                "subjects must list at least one pattern, or be NULL for every subject",
            ));
        }
        if list.len() > MAX_PATTERNS {
            return Err(Invalid(format!("subjects may list at most {MAX_PATTERNS} patterns")));
        }
        let patterns =
            list.iter().map(|p| Pattern::parse(p.as_ref())).collect::<Result<Vec<_>, _>>()?;
        Ok(Scope { patterns })
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// The union of two scopes; `None` stands for "every subject".
    pub fn union(a: Option<Scope>, b: Option<Scope>) -> Option<Scope> {
        let (mut a, b) = (a?, b?);
        for p in b.patterns {
            if !a.patterns.contains(&p) {
                a.patterns.push(p);
            }
        }
        Some(a)
    }

    /// `subject` must be valid.
    pub fn admits_subject(&self, subject: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(subject))
    }

    pub fn admits_pattern(&self, pattern: &Pattern) -> bool {
        self.patterns.iter().any(|p| p.contains(pattern))
    }

    /// The first include pattern of `filter` that is not within this scope.
    pub fn first_outside<'f>(&self, filter: &'f Filter) -> Option<&'f Pattern> {
        filter.include.iter().find(|p| !self.admits_pattern(p))
    }

    /// The scope as an anchored SQL regular expression over subjects; `None` when it
    /// admits every subject.
    pub fn regex(&self) -> Option<String> {
        Filter { include: self.patterns.clone(), exclude: Vec::new() }.include_regex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(list: &[&str]) -> Scope {
        Scope::parse(list).unwrap()
    }

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        Filter::parse(include, exclude).unwrap()
    }

    #[test]
    fn a_tenant_scope_admits_its_own_subjects_only() {
        let tenant = scope(&["seller.42.>"]);
        assert!(tenant.first_outside(&filter(&["seller.42.order.*"], &[])).is_none());
        assert!(tenant.first_outside(&filter(&["seller.42.>"], &[])).is_none());
        let outside = filter(&["seller.42.order.*", "seller.*.order.*"], &[]);
        assert_eq!(tenant.first_outside(&outside).map(Pattern::as_str), Some("seller.*.order.*"));
        assert!(tenant.first_outside(&filter(&[">"], &[])).is_some());
        assert!(tenant.first_outside(&filter(&["seller.42"], &[])).is_some());
        // excludes do not earn their way in
        assert!(tenant.first_outside(&filter(&["seller.>"], &["seller.1.>"])).is_some());
        assert!(tenant.admits_subject("seller.42.order.created"));
        assert!(!tenant.admits_subject("seller.43.order.created"));
        assert!(!tenant.admits_subject("seller.42"));
    }

    #[test]
    fn grants_list_one_to_a_hundred_valid_patterns() {
        assert!(Scope::parse::<&str>(&[]).is_err());
        assert!(Scope::parse(&["a.>", "b..c"]).is_err());
        assert!(Scope::parse(&vec!["a"; MAX_PATTERNS]).is_ok());
        assert!(Scope::parse(&vec!["a"; MAX_PATTERNS + 1]).is_err());
    }

    #[test]
    fn unions_of_unlimited_scopes_are_unlimited() {
        let a = Some(scope(&["a.>"]));
        let b = Some(scope(&["b.*", "a.>"]));
        assert_eq!(Scope::union(a.clone(), None), None);
        assert_eq!(Scope::union(None, b.clone()), None);
        let both = Scope::union(a, b).unwrap();
        let texts: Vec<&str> = both.patterns().iter().map(Pattern::as_str).collect();
        assert_eq!(texts, ["a.>", "b.*"]);
    }

    #[test]
    fn the_regex_matches_what_the_scope_admits() {
        let s = scope(&["seller.42.>", "audit.*"]);
        let re = regex::Regex::new(&s.regex().unwrap()).unwrap();
        assert_eq!(scope(&["a.*", ">"]).regex(), None);
        for subject in
            ["seller.42.x", "seller.42.x.y", "audit.a", "seller.4.x", "audit.a.b", "seller.42"]
        {
            assert_eq!(re.is_match(subject), s.admits_subject(subject), "{subject}");
        }
    }
}
