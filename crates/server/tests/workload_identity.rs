//! Workload certificates: on a server with a client CA, a certificate whose URI SAN is a
//! principal's SPIFFE id authenticates as that principal without a bearer token; a certificate
//! and a token of two different principals are refused together.

mod common;

use common::{Pki, Server};
use rcgen::SanType;
use rcgen::string::Ia5String;
use reqwest::StatusCode;
use selene_kms_server::ServeOptions;
use serde_json::{Value, json};

const WORKLOAD: &str = "spiffe://example.org/ns/prod/sa/executor";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_to_a_principal_authenticates_as_it() {
    let pki = Pki::new();
    let s = Server::start_with(ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls: Some(pki.server(true)),
        ..ServeOptions::default()
    })
    .await;
    let url = s.url.replace("127.0.0.1", "localhost");
    let client = |uri: &str| {
        let san = SanType::URI(Ia5String::try_from(uri).expect("uri"));
        pki.http(Some(pki.client(vec![san])))
    };
    let workload = client(WORKLOAD);
    let stranger = client("spiffe://example.org/ns/prod/sa/unknown");
    let whoami = |http: &reqwest::Client, token: Option<&str>| {
        let mut req = http.get(format!("{url}/v1/auth/whoami"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.expect("https");
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Before any principal is bound to it, the certificate alone is nobody.
    assert_eq!(whoami(&workload, None).await.0, StatusCode::UNAUTHORIZED);
    let created = stranger
        .post(format!("{url}/v1/admin/principals"))
        .bearer_auth(&s.admin)
        .json(
            &json!({"name": "executor-1", "role": "executor", "tenants": ["acme"],
                      "spiffe_id": WORKLOAD}),
        )
        .send()
        .await
        .expect("https");
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.expect("json");
    let own_token = created["token"].as_str().expect("token").to_owned();

    let (status, me) = whoami(&workload, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["name"], "executor-1");
    assert_eq!(me["principal_id"], created["principal_id"]);
    assert_eq!(me["role"], "executor");
    // The certificate and a token of the same principal agree; of another, they do not.
    assert_eq!(whoami(&workload, Some(&own_token)).await.0, StatusCode::OK);
    assert_eq!(
        whoami(&workload, Some(&s.admin)).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A certificate bound to no principal still lets a bearer token speak for itself.
    assert_eq!(whoami(&stranger, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        whoami(&stranger, Some(&s.admin)).await.1["name"],
        "bootstrap-admin"
    );

    // A certificate of a principal that expired speaks for nobody, not even beside a token.
    let brief = "spiffe://example.org/ns/prod/sa/brief";
    let made = stranger
        .post(format!("{url}/v1/admin/principals"))
        .bearer_auth(&s.admin)
        .json(
            &json!({"name": "brief", "role": "os", "tenants": ["acme"], "spiffe_id": brief,
                      "ttl_ms": 1}),
        )
        .send()
        .await
        .expect("https");
    assert_eq!(made.status(), StatusCode::CREATED);
    let expires = made.json::<Value>().await.expect("json")["expires_at_ms"]
        .as_u64()
        .expect("expiry");
    // Wait for the clock, not for the server.
    while selene_kms_server::now_ms() <= expires {
        std::hint::spin_loop();
    }
    let expired = client(brief);
    assert_eq!(whoami(&expired, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        whoami(&expired, Some(&s.admin)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Revoking the principal revokes the certificate's access at once.
    let id = created["principal_id"].as_str().expect("id");
    let revoked = stranger
        .delete(format!("{url}/v1/admin/principals/{id}"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .expect("https");
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(whoami(&workload, None).await.0, StatusCode::UNAUTHORIZED);
    s.stop().await;
}
