//! The services' rules, called directly on a running node's `Core` (no HTTP in between):
//! lockout turns, TOTP enrolment and second factors. The rules of an administrator's change
//! to an account are unit tests in `src/users.rs`; session lifetimes in
//! `actors/src/store.rs`.

use std::net::{IpAddr, Ipv4Addr};

use futures::future::join_all;
use sark::auth::mfa::{self, Enrollee};
use sark::auth::service::{self, LoginOutcome};
use sark::error::ErrorKind;
use sark::store::Role;
use sark::users::{self, Admin, NewAccount};
use zeroize::Zeroizing;

use crate::helpers::{TestApp, oathtool, spawn_app};

const IP: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));

fn password(text: &str) -> Zeroizing<String> {
    Zeroizing::new(text.to_owned())
}

/// The administrator of these changes (the rules under test do not depend on who).
fn admin() -> Admin<'static> {
    Admin {
        user_id: uuid::Uuid::nil(),
        username: "admin",
        ip: IP,
    }
}

#[tokio::test]
async fn lockout_turns_count_concurrent_failures_one_at_a_time_and_lock_once() {
    let app = spawn_app().await;
    let node = app.node();
    let threshold = node.config.auth.lockout_threshold;
    // Twelve wrong passwords at once, under names that differ only in case and spaces: one
    // lockout key, so they take turns.
    let names = ["admin", "Admin", " ADMIN "];
    let attempts = (0..12).map(|i| {
        service::password_login(node, names[i % names.len()], password("wrong-password"), IP)
    });
    let outcomes = join_all(attempts).await;
    let codes: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Ok(_) => "logged_in".to_owned(),
            Err(err) => err.code().to_owned(),
        })
        .collect();
    let invalid = codes.iter().filter(|c| *c == "invalid_credentials").count();
    let locked = codes.iter().filter(|c| *c == "account_locked").count();
    let threshold = usize::try_from(threshold).unwrap();
    assert_eq!(
        (invalid, locked),
        (threshold - 1, 12 - (threshold - 1)),
        "every failure counted once, the threshold-th locks: {codes:?}"
    );
    let events = app.audit_events(200).await;
    let lock_events = events
        .iter()
        .filter(|e| e.event.event_type == "account_locked")
        .count();
    assert_eq!(lock_events, 1, "the lock is audited once");

    // Locked: even the right password is refused, with a Retry-After.
    let Err(err) =
        service::password_login(node, "admin", password(TestApp::ADMIN_PASSWORD), IP).await
    else {
        panic!("a locked account must refuse even the right password");
    };
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Locked, "account_locked")
    );
    assert!(err.retry_after_seconds().is_some_and(|s| s > 0));

    assert!(users::unlock(node, admin(), " Admin").await.unwrap());
    let outcome = service::password_login(node, "admin", password(TestApp::ADMIN_PASSWORD), IP)
        .await
        .expect("unlocked");
    assert!(matches!(outcome, LoginOutcome::Tokens(_)));
    assert!(!users::unlock(node, admin(), "admin").await.unwrap());
}

#[tokio::test]
async fn totp_enrolment_takes_a_matching_code_once_and_then_guards_every_login() {
    let app = spawn_app().await;
    let node = app.node();
    let new = NewAccount {
        username: "carol".into(),
        email: "carol@example.com".into(),
        role: Role::Viewer,
        teams: Vec::new(),
        password: Some(password("a-long-passphrase-for-c")),
    };
    let user = users::create(node, admin(), new).await.unwrap();
    let login = || service::password_login(node, "carol", password("a-long-passphrase-for-c"), IP);
    let session = |outcome: LoginOutcome| match outcome {
        LoginOutcome::Tokens(tokens) => tokens.session_id,
        LoginOutcome::MfaRequired { .. } => panic!("no MFA yet"),
    };
    let other = session(login().await.unwrap());
    let enrolling = session(login().await.unwrap());
    let who = Enrollee {
        user_id: user.id,
        username: "carol",
        session_id: enrolling,
    };

    let err = mfa::confirm_totp(node, who, "123456", IP)
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.code(),
        "no_pending_enrollment",
        "nothing to confirm yet"
    );
    let enrollment = mfa::enroll_totp(node, who, None, IP).await.unwrap();
    let now = node.clock.now().timestamp();
    let later = oathtool(&enrollment.secret, now + 3600);
    let err = mfa::confirm_totp(node, who, &later, IP)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Invalid, "invalid_code")
    );
    let code = oathtool(&enrollment.secret, now);
    let recovery = mfa::confirm_totp(node, who, &code, IP).await.unwrap();
    assert_eq!(recovery.len(), 10);
    let err = mfa::confirm_totp(node, who, &code, IP).await.err().unwrap();
    assert_eq!(err.code(), "no_pending_enrollment", "confirmed once");
    let err = mfa::enroll_totp(node, who, None, IP).await.err().unwrap();
    assert_eq!(err.code(), "mfa_already_enabled");

    // The sessions proven by the password alone went, the enrolling one stays.
    let stored = |id| async move { node.store.session(id).await.unwrap().unwrap() };
    assert!(stored(other).await.revoked_at.is_some());
    assert!(stored(enrolling).await.revoked_at.is_none());

    // Every login now asks for a second factor; the code that confirmed is spent.
    let challenge = || async {
        match login().await.unwrap() {
            LoginOutcome::MfaRequired { challenge_id, .. } => challenge_id,
            LoginOutcome::Tokens(_) => panic!("MFA is on"),
        }
    };
    let err = service::verify_mfa(node, challenge().await, &code, IP)
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    let tokens = service::verify_mfa(node, challenge().await, &recovery[0], IP)
        .await
        .unwrap();
    assert_eq!(tokens.user.username, "carol");
    let err = service::verify_mfa(node, challenge().await, &recovery[0], IP)
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.kind(),
        ErrorKind::Unauthenticated,
        "a recovery code works once"
    );
}
