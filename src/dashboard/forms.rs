//! Form and query fields as sent by browsers (`a=1&ids=x&ids=y`), with repeated names kept:
//! serde's urlencoded reader cannot collect a list of checkboxes.

/// The fields of a form body or a query string, in order.
#[derive(Debug, Default)]
pub struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    /// Parses `application/x-www-form-urlencoded` bytes.
    pub fn parse(bytes: &[u8]) -> Self {
        Self {
            fields: form_urlencoded::parse(bytes).into_owned().collect(),
        }
    }

    /// The first value of `name`, if sent and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim())
            .filter(|value| !value.is_empty())
    }

    /// Every value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_fields_are_all_kept_and_blanks_read_as_absent() {
        let form = Form::parse(b"ids=dlv_a&csrf=t%2Bk&ids=dlv_b&session=+&q=a+b");
        assert_eq!(form.all("ids").collect::<Vec<_>>(), ["dlv_a", "dlv_b"]);
        assert_eq!(form.get("csrf"), Some("t+k"));
        assert_eq!(form.get("session"), None);
        assert_eq!(form.get("q"), Some("a b"));
        assert_eq!(form.get("missing"), None);
    }
}
