//! `sluice apps ...` and `sluice feedback`: register applications, link models, query them
//! through their selection policy, give feedback and read what was learned.

use super::client::{admin_request, connect, proto_inputs, refused};
use super::{InputArgs, ServerArgs};
use anyhow::Result;
use sluice_api::proto::{self, policy::Kind};
use sluice_frontend::messages::json::{answer_json, value_json};

/// The policy names `--policy` accepts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum PolicyName {
    /// One model per query, drawn by weight (a bandit).
    Exp3,
    /// Every model, combined by weight (an ensemble).
    Exp4,
    /// Always the model named by --static-model.
    Static,
    /// The best model so far, a random one with probability --epsilon.
    EpsilonGreedy,
}

/// What an application predicts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum KindName {
    /// Class labels (0/1 loss).
    Class,
    /// Numbers (absolute error).
    Number,
}

/// Flags of `sluice apps create`.
#[derive(Debug, clap::Args)]
pub(super) struct CreateArgs {
    /// The application's name.
    name: String,
    /// Models to link: `name` or `name@version`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Latency objective in milliseconds.
    #[arg(long, default_value_t = 20)]
    slo_ms: u64,
    /// The output tensor read from each model.
    #[arg(long, default_value = "label")]
    output: String,
    /// Class labels or numbers.
    #[arg(long, value_enum, default_value = "class")]
    kind: KindName,
    /// The default output (a class label, or a number for `--kind number`).
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    default_output: f64,
    /// The selection policy.
    #[arg(long, value_enum, default_value = "exp3")]
    policy: PolicyName,
    /// Learning rate (Exp3: 0.1, Exp4: 0.2 by default).
    #[arg(long)]
    eta: Option<f64>,
    /// Exp3's exploration share (default 0.05).
    #[arg(long)]
    gamma: Option<f64>,
    /// Epsilon-greedy's exploration probability (default 0.1).
    #[arg(long)]
    epsilon: Option<f64>,
    /// The model of the static policy.
    #[arg(long, required_if_eq("policy", "static"))]
    static_model: Option<String>,
    /// Below this confidence (0 to 1) a row gets the default output.
    #[arg(long, default_value_t = 0.0)]
    confidence_threshold: f64,
    /// Seed of the policy's random draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `sluice apps` actions.
#[derive(Debug, clap::Subcommand)]
pub(super) enum AppsAction {
    /// Register an application.
    Create(CreateArgs),
    /// Link a loaded model (`name` or `name@version`) to an application.
    Link {
        /// The application.
        app: String,
        /// The model.
        model: String,
    },
    /// Unlink a model from an application.
    Unlink {
        /// The application.
        app: String,
        /// The model.
        model: String,
    },
    /// Delete an application and what it learned.
    Delete {
        /// The application.
        app: String,
    },
    /// Query an application (inputs as for `sluice predict`).
    Predict {
        /// The application.
        app: String,
        #[command(flatten)]
        input: InputArgs,
        /// Choose and learn for this user or session.
        #[arg(long, default_value = "")]
        user: String,
        /// Do not answer from the prediction cache.
        #[arg(long)]
        bypass_cache: bool,
    },
    /// Show what an application's policy has learned.
    State {
        /// The application.
        app: String,
        /// This user's state (default: the application-wide state).
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Forget what an application learned.
    Reset {
        /// The application.
        app: String,
        /// Only this user's state (default: the application-wide state).
        #[arg(long, default_value = "", conflicts_with = "all_users")]
        user: String,
        /// Every user's state and the application-wide state.
        #[arg(long)]
        all_users: bool,
    },
}

/// Flags of `sluice feedback`.
#[derive(Debug, clap::Args)]
pub(super) struct FeedbackArgs {
    /// The application.
    app: String,
    #[command(flatten)]
    input: InputArgs,
    /// The true label of each row, in order (class labels, or numbers for number apps).
    #[arg(long = "label", required = true, allow_negative_numbers = true)]
    labels: Vec<String>,
    /// The user or session the query was for.
    #[arg(long, default_value = "")]
    user: String,
}

/// A label from the command line: an integer is a class label, anything else a number.
fn parse_value(text: &str) -> Result<proto::Value> {
    let value = match text.parse::<i64>() {
        Ok(label) => proto::value::Value::ClassLabel(label),
        Err(_) => proto::value::Value::Number(
            text.parse()
                .map_err(|_| anyhow::anyhow!("`{text}` is neither a class label nor a number"))?,
        ),
    };
    Ok(proto::Value { value: Some(value) })
}

fn policy_summary(policy: Option<&proto::Policy>) -> String {
    match policy.and_then(|p| p.kind.as_ref()) {
        Some(Kind::Exp3(p)) => format!(
            "exp3 eta={} gamma={}",
            p.eta.unwrap_or_default(),
            p.gamma.unwrap_or_default()
        ),
        Some(Kind::Exp4(p)) => format!("exp4 eta={}", p.eta.unwrap_or_default()),
        Some(Kind::StaticModel(p)) => format!("static {}", p.model),
        Some(Kind::EpsilonGreedy(p)) => {
            format!("epsilon-greedy epsilon={}", p.epsilon.unwrap_or_default())
        }
        None => "-".into(),
    }
}

fn print_application(app: &proto::Application) {
    println!(
        "{}\tslo={}ms\toutput={}\tdefault={}\t{}\tmodels: {}",
        app.name,
        app.slo_ms,
        app.output,
        value_json(app.default_output.as_ref()),
        policy_summary(app.policy.as_ref()),
        app.models.join(", ")
    );
}

fn create_request(args: CreateArgs) -> proto::RegisterApplicationRequest {
    let kind = match args.policy {
        PolicyName::Exp3 => Kind::Exp3(proto::policy::Exp3 {
            eta: args.eta,
            gamma: args.gamma,
        }),
        PolicyName::Exp4 => Kind::Exp4(proto::policy::Exp4 { eta: args.eta }),
        PolicyName::Static => Kind::StaticModel(proto::policy::Static {
            model: args.static_model.unwrap_or_default(),
        }),
        PolicyName::EpsilonGreedy => Kind::EpsilonGreedy(proto::policy::EpsilonGreedy {
            epsilon: args.epsilon,
        }),
    };
    let (app_kind, default_output) = match args.kind {
        KindName::Class => (
            proto::application::Kind::Class,
            proto::value::Value::ClassLabel(args.default_output as i64),
        ),
        KindName::Number => (
            proto::application::Kind::Number,
            proto::value::Value::Number(args.default_output),
        ),
    };
    proto::RegisterApplicationRequest {
        application: Some(proto::Application {
            name: args.name,
            models: args.models,
            slo_ms: args.slo_ms,
            output: args.output,
            kind: app_kind as i32,
            default_output: Some(proto::Value {
                value: Some(default_output),
            }),
            policy: Some(proto::Policy { kind: Some(kind) }),
            confidence_threshold: args.confidence_threshold,
            seed: args.seed,
        }),
    }
}

fn print_state(state: &proto::SelectionState) {
    println!(
        "{} ({}), user `{}`: {} feedback events",
        state.app, state.policy, state.user_id, state.feedback_count
    );
    // The column each policy acts on: Exp3 draws one model with a probability, Exp4 gives each
    // model its share of the vote; the others choose by mean loss alone.
    let total_weight: f64 = state.arms.iter().map(|arm| arm.weight).sum();
    let policy_value = |arm: &proto::ArmState| match state.policy.as_str() {
        "exp3" => Some(arm.probability),
        "exp4" => Some(arm.weight / total_weight),
        _ => None,
    };
    let heading = match state.policy.as_str() {
        "exp3" => "P(DRAW)\t",
        "exp4" => "VOTE SHARE\t",
        _ => "",
    };
    println!("MODEL\tWEIGHT\t{heading}OBSERVED\tMEAN LOSS");
    for arm in &state.arms {
        let policy_column = policy_value(arm)
            .map(|value| format!("{value:.4}\t"))
            .unwrap_or_default();
        println!(
            "{}\t{:.4}\t{policy_column}{}\t{:.4}",
            arm.model, arm.weight, arm.observations, arm.mean_loss
        );
    }
}

/// Runs `sluice apps [ACTION]` (no action: list).
pub(super) async fn run(server: &ServerArgs, action: Option<AppsAction>) -> Result<()> {
    let mut client = connect(server).await?;
    match action {
        None => {
            let apps = client
                .list_applications(proto::ListApplicationsRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .applications;
            if apps.is_empty() {
                println!(
                    "no applications; register one with `sluice apps create NAME --models ...`"
                );
            }
            apps.iter().for_each(print_application);
        }
        Some(AppsAction::Create(args)) => {
            let request = admin_request(create_request(args), server)?;
            let app = client
                .register_application(request)
                .await
                .map_err(refused)?;
            print_application(&app.into_inner().application.unwrap_or_default());
        }
        Some(AppsAction::Link { app, model }) => {
            let request = admin_request(proto::LinkModelRequest { app, model }, server)?;
            let app = client.link_model(request).await.map_err(refused)?;
            print_application(&app.into_inner().application.unwrap_or_default());
        }
        Some(AppsAction::Unlink { app, model }) => {
            let request = admin_request(proto::UnlinkModelRequest { app, model }, server)?;
            let app = client.unlink_model(request).await.map_err(refused)?;
            print_application(&app.into_inner().application.unwrap_or_default());
        }
        Some(AppsAction::Delete { app }) => {
            let request =
                admin_request(proto::DeleteApplicationRequest { app: app.clone() }, server)?;
            client.delete_application(request).await.map_err(refused)?;
            println!("deleted application {app}");
        }
        Some(AppsAction::Predict {
            app,
            input,
            user,
            bypass_cache,
        }) => {
            let request = proto::PredictAppRequest {
                app,
                user_id: user,
                inputs: proto_inputs(&input.read()?)?,
                bypass_cache,
            };
            let answer = client
                .predict_app(request)
                .await
                .map_err(refused)?
                .into_inner();
            let report = answer_json(&answer);
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Some(AppsAction::State { app, user }) => {
            let request = proto::GetSelectionStateRequest { app, user_id: user };
            let state = client.get_selection_state(request).await.map_err(refused)?;
            print_state(&state.into_inner().state.unwrap_or_default());
        }
        Some(AppsAction::Reset {
            app,
            user,
            all_users,
        }) => {
            let message = proto::ResetSelectionStateRequest {
                app: app.clone(),
                user_id: user,
                all_users,
            };
            client
                .reset_selection_state(admin_request(message, server)?)
                .await
                .map_err(refused)?;
            println!("reset the selection state of {app}");
        }
    }
    Ok(())
}

/// Runs `sluice feedback`.
pub(super) async fn feedback(server: &ServerArgs, args: FeedbackArgs) -> Result<()> {
    let request = proto::FeedbackRequest {
        app: args.app,
        user_id: args.user,
        inputs: proto_inputs(&args.input.read()?)?,
        labels: args
            .labels
            .iter()
            .map(|l| parse_value(l))
            .collect::<Result<_>>()?,
    };
    let outcome = connect(server)
        .await?
        .feedback(request)
        .await
        .map_err(refused)?
        .into_inner();
    for loss in &outcome.losses {
        match loss.loss {
            Some(value) => println!("{}\tloss {value:.4}", loss.model),
            None => println!("{}\tfailed on this input", loss.model),
        }
    }
    print_state(&outcome.state.unwrap_or_default());
    Ok(())
}
