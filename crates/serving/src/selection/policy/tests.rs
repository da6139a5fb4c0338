use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn models(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn state_with(weights: &[(&str, f64)]) -> SelectionState {
    let mut state = SelectionState::default();
    for (name, weight) in weights {
        state.arms.insert(
            name.to_string(),
            ArmState {
                weight: *weight,
                observations: 0,
                total_loss: 0.0,
            },
        );
    }
    state
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn losses_are_zero_one_for_classes_and_absolute_error_for_numbers() {
    use Prediction::*;
    assert_eq!(loss(Class(3), Class(3)), 0.0);
    assert_eq!(loss(Class(3), Class(4)), 1.0);
    assert_eq!(loss(Number(2.5), Number(1.0)), 1.5);
    assert_eq!(loss(Number(2.0), Class(2)), 1.0);
}

#[test]
fn exp3_multiplies_the_chosen_weight_by_exp_of_minus_eta_loss_over_p() {
    let names = models(&["a", "b"]);
    let policy = PolicyConfig::Exp3 {
        eta: 0.1,
        gamma: 0.0,
    };
    let mut state = state_with(&[("a", 1.0), ("b", 1.0)]);
    // p(a) = 0.5, loss 1: w(a) = exp(-0.1 / 0.5) = 0.818730753...
    policy.observe(&mut state, &names, &[0], &[Some(1.0), Some(0.0)]);
    assert!(close(state.arms["a"].weight, (-0.2f64).exp()));
    assert_eq!(state.arms["b"].weight, 1.0, "b was not chosen: unchanged");
    assert_eq!(state.arms["a"].observations, 1);
    assert_eq!(state.arms["b"].observations, 0);
    assert_eq!(state.feedback_count, 1);
}

#[test]
fn exp3_probabilities_mix_in_gamma_uniformly() {
    let p = exp3_probabilities(&[1.0, 0.25, 0.25], 0.3);
    // 0.7 * (1/1.5, 0.25/1.5, 0.25/1.5) + 0.1
    assert!(close(p[0], 0.7 / 1.5 + 0.1));
    assert!(close(p[1], 0.7 * 0.25 / 1.5 + 0.1));
    assert!(close(p.iter().sum::<f64>(), 1.0));
}

#[test]
fn exp3_draws_in_proportion_to_the_probabilities() {
    let names = models(&["a", "b"]);
    let policy = PolicyConfig::Exp3 {
        eta: 0.1,
        gamma: 0.0,
    };
    let state = state_with(&[("a", 1.0), ("b", 0.25)]);
    let mut rng = StdRng::seed_from_u64(7);
    let draws = 20_000;
    let a = (0..draws)
        .filter(|_| policy.select(&state, &names, &mut rng) == vec![0])
        .count();
    let share = a as f64 / draws as f64;
    assert!(
        (share - 0.8).abs() < 0.02,
        "a drawn {share:.3} of the time, expected 0.8"
    );
}

#[test]
fn exp4_updates_every_model_with_its_own_loss() {
    let names = models(&["a", "b", "c"]);
    let policy = PolicyConfig::Exp4 { eta: 0.5 };
    let mut state = state_with(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
    policy.observe(
        &mut state,
        &names,
        &[0, 1, 2],
        &[Some(1.0), Some(0.0), None],
    );
    assert!(close(state.arms["a"].weight, (-0.5f64).exp()));
    assert_eq!(state.arms["b"].weight, 1.0);
    assert_eq!(
        state.arms["c"].weight, 1.0,
        "no loss known for c: unchanged"
    );
    assert_eq!(state.arms["c"].observations, 0);
}

#[test]
fn weights_are_rescaled_so_the_largest_is_one_and_floored() {
    let names = models(&["a", "b"]);
    let policy = PolicyConfig::Exp4 { eta: 1.0 };
    let mut state = state_with(&[("a", 1.0), ("b", 1.0)]);
    policy.observe(&mut state, &names, &[0, 1], &[Some(1.0), Some(1.0)]);
    assert_eq!((state.arms["a"].weight, state.arms["b"].weight), (1.0, 1.0));
    for _ in 0..20 {
        policy.observe(&mut state, &names, &[0, 1], &[Some(1.0), Some(0.0)]);
    }
    assert_eq!(state.arms["a"].weight, WEIGHT_FLOOR, "exp(-20) is floored");
    assert_eq!(state.arms["b"].weight, 1.0);
}

#[test]
fn exp4_votes_by_weight_and_reports_the_agreeing_share() {
    let names = models(&["a", "b", "c"]);
    let policy = PolicyConfig::EXP4_DEFAULT;
    let state = state_with(&[("a", 1.0), ("b", 0.5), ("c", 0.6)]);
    use Prediction::Class;
    let all = policy
        .combine(
            &state,
            &names,
            &[Some(Class(3)), Some(Class(4)), Some(Class(4))],
        )
        .unwrap();
    assert_eq!(all.prediction, Class(4));
    assert!(close(all.confidence, 1.1 / 2.1));
    // c is a straggler: combine what arrived.
    let without_c = policy
        .combine(&state, &names, &[Some(Class(3)), Some(Class(4)), None])
        .unwrap();
    assert_eq!(without_c.prediction, Class(3));
    assert!(close(without_c.confidence, 1.0 / 1.5));
    assert_eq!(policy.combine(&state, &names, &[None, None, None]), None);
}

#[test]
fn exp4_averages_numbers_by_weight() {
    let names = models(&["a", "b"]);
    let policy = PolicyConfig::EXP4_DEFAULT;
    let state = state_with(&[("a", 1.0), ("b", 0.5)]);
    use Prediction::Number;
    let spread = policy
        .combine(&state, &names, &[Some(Number(2.0)), Some(Number(5.0))])
        .unwrap();
    assert_eq!(spread.prediction, Number(3.0));
    assert_eq!(spread.confidence, 0.0, "neither is within 5% of 3.0");
    let agreeing = policy
        .combine(&state, &names, &[Some(Number(10.0)), Some(Number(10.3))])
        .unwrap();
    assert_eq!(agreeing.confidence, 1.0);
}

#[test]
fn a_newly_linked_model_starts_at_the_mean_weight_and_unlinked_ones_go() {
    let mut state = state_with(&[("a", 1.0), ("b", 0.5)]);
    state.sync(&models(&["a", "b", "c"]));
    assert_eq!(state.arms["c"].weight, 0.75);
    state.sync(&models(&["b", "c"]));
    assert!(!state.arms.contains_key("a"));
    let mut empty = SelectionState::default();
    empty.sync(&models(&["x"]));
    assert_eq!(empty.arms["x"].weight, 1.0);
}

#[test]
fn static_and_epsilon_greedy_choose_as_documented() {
    let names = models(&["a", "b", "c"]);
    let mut rng = StdRng::seed_from_u64(1);
    let mut state = state_with(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
    let fixed = PolicyConfig::Static { model: "b".into() };
    assert_eq!(fixed.select(&state, &names, &mut rng), vec![1]);
    let greedy = PolicyConfig::EpsilonGreedy { epsilon: 0.0 };
    // Mean losses: a 1, b 0, c untried (0); ties go to the first index, so b.
    greedy.observe(&mut state, &names, &[0], &[Some(1.0), None, None]);
    greedy.observe(&mut state, &names, &[1], &[None, Some(0.0), None]);
    assert_eq!(greedy.select(&state, &names, &mut rng), vec![1]);
    greedy.observe(&mut state, &names, &[1], &[None, Some(1.0), None]);
    assert_eq!(
        greedy.select(&state, &names, &mut rng),
        vec![2],
        "b's mean loss is now 0.5; c is untried (0)"
    );
    let explorer = PolicyConfig::EpsilonGreedy { epsilon: 1.0 };
    let picked: std::collections::BTreeSet<usize> = (0..100)
        .map(|_| explorer.select(&state, &names, &mut rng)[0])
        .collect();
    assert_eq!(picked.len(), 3, "ε = 1 explores every model");
}

#[test]
fn parameters_out_of_range_are_refused_by_name() {
    let linked = models(&["a"]);
    let bad = [
        (
            PolicyConfig::Exp3 {
                eta: 0.0,
                gamma: 0.1,
            },
            "eta",
        ),
        (
            PolicyConfig::Exp3 {
                eta: 0.1,
                gamma: 2.0,
            },
            "gamma",
        ),
        (PolicyConfig::EpsilonGreedy { epsilon: -0.1 }, "epsilon"),
        (PolicyConfig::Static { model: "z".into() }, "`z`"),
    ];
    for (config, name) in bad {
        let error = config.validate(&linked).unwrap_err();
        assert!(error.contains(name), "{error}");
    }
    assert!(PolicyConfig::EXP3_DEFAULT.validate(&linked).is_ok());
}
