//! Fuzz target: the readers of message bodies (error fields, ParameterStatus, Bind names, DEALLOCATE ALL) agree with simple models.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::relay;
use pgbouncers_worker::wire::fields::{cstr, parameter_status, u32_be, ErrorFields};

/// ErrorResponse fields the straightforward way: `(kind, value)` pairs up to a zero kind or
/// an unterminated value.
fn model_error_fields(body: &[u8]) -> ErrorFields {
    let mut f = ErrorFields::default();
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let kind = body[i];
        let Some(len) = body[i + 1..].iter().position(|&b| b == 0) else {
            break;
        };
        let value = String::from_utf8_lossy(&body[i + 1..i + 1 + len]).into_owned();
        match kind {
            b'V' => f.severity = Some(value),
            b'S' if f.severity.is_none() => f.severity = Some(value),
            b'C' => f.code = Some(value),
            b'M' => f.message = Some(value),
            b'D' => f.detail = Some(value),
            _ => {}
        }
        i += len + 2;
    }
    f
}

fuzz_target!(|body: &[u8]| {
    let f = ErrorFields::parse(body);
    assert_eq!(f, model_error_fields(body));
    let _ = f.to_string();

    if let Some((name, value)) = parameter_status(body) {
        let mut want = name.as_bytes().to_vec();
        want.push(0);
        want.extend_from_slice(value.as_bytes());
        want.push(0);
        assert!(body.starts_with(&want), "parameter_status invented bytes");
    } else if let Some((n, rest)) = cstr(body) {
        // None only for a missing terminator or text that is not UTF-8.
        let value_ok = cstr(rest).is_some_and(|(v, _)| std::str::from_utf8(v).is_ok());
        assert!(std::str::from_utf8(n).is_err() || !value_ok);
    }

    if let Some((portal, stmt)) = relay::bind_names(body) {
        assert!(!portal.contains(&0) && !stmt.contains(&0));
        assert_eq!(body.get(portal.len()), Some(&0));
        assert_eq!(
            body.get(portal.len() + 1..portal.len() + 1 + stmt.len()),
            Some(stmt)
        );
        assert_eq!(body.get(portal.len() + 1 + stmt.len()), Some(&0));
    }

    // Only the three spellings, give or take case, blanks and a `;`, forget everything.
    let letters: Vec<u8> = body
        .strip_suffix(&[0])
        .unwrap_or(body)
        .iter()
        .filter(|b| !b.is_ascii_whitespace() && **b != b';')
        .map(u8::to_ascii_lowercase)
        .collect();
    let spelled = [
        &b"discardall"[..],
        b"deallocateall",
        b"deallocateprepareall",
    ]
    .contains(&&letters[..]);
    if relay::forgets_all(body) {
        assert!(spelled, "forgets_all({:?})", String::from_utf8_lossy(body));
    }
    if spelled && body.is_ascii() && !body[..body.len().saturating_sub(1)].contains(&0) {
        // The plain spellings are recognised, with or without a trailing `;`.
        let words = String::from_utf8_lossy(&letters).into_owned();
        let canonical = match words.as_str() {
            "discardall" => "DISCARD ALL",
            "deallocateall" => "deallocate all",
            _ => "DEALLOCATE PREPARE ALL;",
        };
        assert!(relay::forgets_all(format!("{canonical}\0").as_bytes()));
    }

    if let Some((n, rest)) = u32_be(body) {
        assert_eq!(n.to_be_bytes(), body[..4]);
        assert_eq!(rest, &body[4..]);
    }
});
