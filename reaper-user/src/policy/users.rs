//! policy: a rule or protection naming a user is checked at load against
//! the users reaper can see (crate::users): a name no file knows could
//! never match, and a protection that cannot match is a safety defect.

use super::{Policy, UserSpec};

impl Policy {
    /// Err names the first rule or protection whose `user = "NAME"` no
    /// passwd file reaper reads (nor the system's user database) knows.
    pub fn check_users(&self) -> Result<(), String> {
        let rules = self.rules.iter().map(|r| ("rule", &r.name, &r.matcher));
        let protects = self
            .protects
            .iter()
            .map(|p| ("protect", &p.name, &p.matcher));
        for (kind, name, m) in rules.chain(protects) {
            if let Some(UserSpec::Name(user)) = &m.user {
                if crate::users::uid_of(user).is_none() {
                    return Err(format!(
                        "{kind} '{name}': {}",
                        crate::users::unresolvable(user)
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protection_naming_an_unknown_user_is_refused_by_name() {
        let p = Policy::from_toml_str(
            "[[protect]]\nname = \"db\"\nmatch = { user = \"no-such-user-reaper-test\" }\n",
        )
        .unwrap();
        let e = p.check_users().unwrap_err();
        assert!(
            e.starts_with("protect 'db': user \"no-such-user-reaper-test\" is not known here"),
            "{e}"
        );
        let ok = Policy::from_toml_str(
            "[[protect]]\nname = \"root's\"\nmatch = { user = \"root\" }\n[[protect]]\nname = \"by uid\"\nmatch = { user = 4242 }\n",
        )
        .unwrap();
        assert_eq!(ok.check_users(), Ok(()));
    }
}
