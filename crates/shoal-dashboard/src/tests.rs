use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn the_embedded_page_fits_its_budget() {
    let total: usize = ASSETS.iter().map(|(_, _, body)| body.len()).sum();
    assert!(
        total <= PAGE_BUDGET_BYTES,
        "the page weighs {total} bytes, over its {PAGE_BUDGET_BYTES}-byte budget (README)"
    );
    for (path, _, body) in ASSETS {
        assert!(!body.is_empty(), "{path} is empty");
        // No asset reaches outside the binary (no CDN, no web font).
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{path} refers to something outside the dashboard"
        );
    }
}

#[test]
fn cookies_and_form_fields_are_read_as_browsers_send_them() {
    let h = headers(&[("cookie", "a=1; shoal_session=tok-en_1; b=2")]);
    assert_eq!(cookie(&h, COOKIE).as_deref(), Some("tok-en_1"));
    assert_eq!(
        cookie(&headers(&[("cookie", "shoal_session=")]), COOKIE),
        None
    );
    assert_eq!(cookie(&HeaderMap::new(), COOKIE), None);
    assert_eq!(
        form_field(b"user=x&password=p%40ss+word%26", "password").as_deref(),
        Some("p@ss word&")
    );
    assert_eq!(form_field(b"password", "password").as_deref(), Some(""));
    assert_eq!(form_field(b"other=1", "password"), None);
    assert_eq!(form_field(&[0xff, 0xfe], "password"), None);
}

#[test]
fn a_login_from_another_site_is_told_apart() {
    assert!(same_origin(&headers(&[("host", "127.0.0.1:9000")])));
    assert!(same_origin(&headers(&[
        ("host", "127.0.0.1:9000"),
        ("origin", "http://127.0.0.1:9000")
    ])));
    assert!(!same_origin(&headers(&[
        ("host", "127.0.0.1:9000"),
        ("origin", "http://evil.example")
    ])));
    assert!(!same_origin(&headers(&[
        ("host", "127.0.0.1:9000"),
        ("sec-fetch-site", "cross-site")
    ])));
}
