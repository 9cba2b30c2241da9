//! The example pipelines under `examples/ci/` are valid for the CI that runs
//! them: each validates against that CI's JSON schema (check-jsonschema's
//! vendored GitHub workflow and GitLab CI schemas), every shell script in
//! them passes shellcheck, and both are wired as their README says: the
//! gate writes its JUnit report whatever the verdict and the CI picks it up,
//! promotion follows only passing gates and rollback only a failing one, and
//! each `driftwatch gate` call uses the command's flags, formats and metric
//! names. Deliberately broken copies prove that the validators reject what
//! is wrong. `./scripts/test.sh` installs check-jsonschema (PyPI, pinned)
//! and shellcheck (Debian).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::repo;

const GITHUB_WORKFLOW: &str = "examples/ci/github-actions.yml";
const GITLAB_PIPELINE: &str = "examples/ci/gitlab-ci.yml";

/// The flags `driftwatch gate --help` lists: the examples may use only these.
fn gate_flags() -> Vec<String> {
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_driftwatch")).args(["gate", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout).to_string();
    let flags: Vec<String> = help
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(str::to_string)
        .collect();
    for flag in ["--old", "--new", "--require", "--from", "--candidate", "--min-labels"] {
        assert!(flags.iter().any(|f| f == flag), "driftwatch gate --help lists {flag}: {help}");
    }
    flags
}
const GATE_FORMATS: &[&str] = &["table", "json", "junit", "markdown"];
const REQUIREMENT_OPERATORS: &[&str] = &[">=", "<=", ">", "<", "=="];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(&repo(path))).unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
}

/// check-jsonschema with one of its vendored schemas: (passed, output).
fn check_jsonschema(schema: &str, file: &Path) -> (bool, String) {
    let output = Command::new("python3")
        .args(["-m", "check_jsonschema", "--builtin-schema", schema])
        .arg(file)
        .output()
        .expect("python3 (with check-jsonschema: ./scripts/test.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        !text.contains("No module named check_jsonschema"),
        "check-jsonschema is not installed: run ./scripts/test.sh"
    );
    (output.status.success(), text)
}

/// shellcheck on a script read from stdin: (passed, output).
fn shellcheck(dialect: &str, script: &str) -> (bool, String) {
    let mut child = Command::new("shellcheck")
        .args(["--shell", dialect, "--severity", "style", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shellcheck (./scripts/test.sh installs it: apt-get install shellcheck)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    )
}

/// `text` with `from` replaced once, which must occur.
fn broken_copy(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example no longer contains {from:?}: update the broken copy");
    text.replacen(from, to, 1)
}

#[test]
fn the_ci_examples_validate_against_their_ci_schemas() {
    let scratch = tempfile::tempdir().unwrap();
    // (example, schema, a mistake, the path check-jsonschema must name).
    let cases = [
        (
            GITHUB_WORKFLOW,
            "vendor.github-workflows",
            ("\n    needs: evaluate\n", "\n    need: evaluate\n"),
            "$.jobs.gate",
        ),
        (GITLAB_PIPELINE, "vendor.gitlab-ci", ("\n  when: on_failure\n", "\n  when: on_failed\n"), "$.rollback.when"),
    ];
    for (example, schema, (from, to), named) in cases {
        let (passed, output) = check_jsonschema(schema, &repo(example));
        assert!(passed, "{example} is not a valid pipeline ({schema}):\n{output}");

        let broken = scratch.path().join(Path::new(example).file_name().unwrap());
        std::fs::write(&broken, broken_copy(&read(&repo(example)), from, to)).unwrap();
        let (passed, output) = check_jsonschema(schema, &broken);
        assert!(!passed, "check-jsonschema accepted a broken copy of {example} ({to:?}):\n{output}");
        assert!(
            output.contains(named),
            "check-jsonschema's complaint about {example} does not name {named}:\n{output}"
        );
    }
}

/// Every GitHub job's `run` scripts, by job name.
fn github_scripts(workflow: &Value) -> BTreeMap<String, Vec<String>> {
    let jobs = workflow["jobs"].as_object().expect("jobs");
    jobs.iter()
        .map(|(name, job)| {
            let steps = job["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
            (name.clone(), steps.iter().filter_map(|step| step["run"].as_str().map(str::to_string)).collect())
        })
        .collect()
}

/// Every GitLab job's `script`, joined into the one script the runner runs.
fn gitlab_scripts(pipeline: &Value) -> BTreeMap<String, String> {
    let entries = pipeline.as_object().expect("a mapping");
    entries
        .iter()
        .filter_map(|(name, job)| {
            let lines = job.get("script")?.as_array()?;
            Some((
                name.clone(),
                lines
                    .iter()
                    .map(|line| line.as_str().expect("script lines are strings"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ))
        })
        .collect()
}

#[test]
fn the_ci_examples_scripts_pass_shellcheck() {
    let mut scripts: Vec<(String, &str, String)> = Vec::new();
    let workflow = yaml(GITHUB_WORKFLOW);
    assert_eq!(workflow["defaults"]["run"]["shell"], "bash", "{GITHUB_WORKFLOW}: bash runs with -o pipefail");
    for (job, runs) in github_scripts(&workflow) {
        for run in runs {
            // An expression pasted into a script is a script injection:
            // the examples pass values through the environment.
            assert!(!run.contains("${{"), "{GITHUB_WORKFLOW}: job {job} expands an expression inside run:\n{run}");
            scripts.push((format!("{GITHUB_WORKFLOW}: job {job}"), "bash", run));
        }
    }
    // GitLab runs the script with sh when the image has no bash.
    for (job, script) in gitlab_scripts(&yaml(GITLAB_PIPELINE)) {
        scripts.push((format!("{GITLAB_PIPELINE}: job {job}"), "sh", script));
    }
    assert!(scripts.len() >= 10, "found only {} scripts", scripts.len());
    for (place, dialect, script) in &scripts {
        let (passed, output) = shellcheck(dialect, script);
        assert!(passed, "{place}: shellcheck --shell {dialect}:\n{output}\n{script}");
    }

    let (place, dialect, gate_script) =
        scripts.iter().find(|(_, _, script)| script.contains("driftwatch gate")).unwrap();
    let broken = broken_copy(gate_script, "\"$@\"", "$@");
    let (passed, output) = shellcheck(dialect, &broken);
    assert!(
        !passed,
        "shellcheck accepted an unquoted $@ (requirements split into words) in a copy of {place}:\n{output}"
    );
}

/// A shell command line split into words (single and double quotes, no
/// expansion).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for character in line.chars() {
        match (quote, character) {
            (Some(open), c) if c == open => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(character);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The `driftwatch gate` calls of a script: the `gate()` function's body
/// with each call's own flags (`gate --format junit > FILE`) appended.
fn gate_calls(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    let body: Vec<String> = joined
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("driftwatch gate"))
        .map(|line| shell_words(line).into_iter().skip(2).filter(|word| word != "$@").collect())
        .unwrap_or_default();
    joined
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("gate "))
        .map(|line| body.iter().cloned().chain(shell_words(line).into_iter().skip(1)).collect())
        .collect()
}

/// The value after `flag` in a call, if any.
fn flag_value<'a>(call: &'a [String], flag: &str) -> Option<&'a str> {
    call.iter().position(|word| word == flag).and_then(|at| call.get(at + 1)).map(String::as_str)
}

/// Checks one call against the command's flags, formats and metric names;
/// returns its format and where its output goes (`> FILE`, `| tee ...`).
fn check_gate_call(place: &str, call: &[String]) -> (String, Option<String>) {
    let metric_names: BTreeSet<&str> = driftwatch::window_metrics::METRIC_NAMES.iter().copied().collect();
    let mut words = call.iter();
    while let Some(word) = words.next() {
        if word.starts_with("--") {
            assert!(gate_flags().contains(word), "{place}: driftwatch gate has no flag {word}: {call:?}");
            let value = words.next().unwrap_or_else(|| panic!("{place}: {word} has no value: {call:?}"));
            if word == "--require" {
                let parts: Vec<&str> = value.split_whitespace().collect();
                assert!(
                    parts.len() >= 3 && metric_names.contains(parts[0]) && REQUIREMENT_OPERATORS.contains(&parts[1]),
                    "{place}: requirement {value:?} is not `METRIC OP VALUE` with a metric name of docs/REFERENCE.md"
                );
            }
        } else if matches!(word.as_str(), ">" | ">>" | "|" | "||") {
            break;
        } else {
            panic!("{place}: driftwatch gate takes no positional argument {word:?}: {call:?}");
        }
    }
    assert!(call.iter().any(|word| word == "--require"), "{place}: a gate without requirements: {call:?}");
    let format = flag_value(call, "--format").unwrap_or("table").to_string();
    assert!(GATE_FORMATS.contains(&format.as_str()), "{place}: no format {format}");
    let destination = ["> ", ">> ", "| tee -a "].iter().find_map(|redirect| {
        call.join(" ").split_once(redirect).map(|(_, rest)| rest.split_whitespace().next().unwrap_or("").to_string())
    });
    (format, destination)
}

/// The online gate's evidence flags, and the offline gate's two files.
fn assert_offline_or_online(place: &str, call: &[String]) {
    let has = |flag: &str| call.iter().any(|word| word == flag);
    if has("--from") {
        for flag in ["--model", "--champion", "--candidate", "--since", "--min-labels"] {
            assert!(has(flag), "{place}: the online gate has no {flag}: {call:?}");
        }
    } else {
        assert!(has("--old") && has("--new"), "{place}: the offline gate compares --old with --new: {call:?}");
    }
}

/// Every job `job` needs, directly or through the jobs it needs.
fn ancestors(needs_of: &BTreeMap<String, Vec<String>>, job: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![job.to_string()];
    while let Some(next) = pending.pop() {
        for need in needs_of.get(&next).into_iter().flatten() {
            if found.insert(need.clone()) {
                pending.push(need.clone());
            }
        }
    }
    found
}

fn names(value: &Value) -> Vec<String> {
    match value {
        Value::String(name) => vec![name.clone()],
        Value::Array(items) => items.iter().filter_map(|item| item.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn the_github_workflow_gates_then_promotes_or_rolls_back() {
    let workflow = yaml(GITHUB_WORKFLOW);
    let jobs = workflow["jobs"].as_object().unwrap();
    let needs_of: BTreeMap<String, Vec<String>> =
        jobs.iter().map(|(name, job)| (name.clone(), names(&job["needs"]))).collect();
    let mut gate_jobs = BTreeMap::new();
    for (job, runs) in github_scripts(&workflow) {
        let place = format!("{GITHUB_WORKFLOW}: job {job}");
        let calls: Vec<Vec<String>> = runs.iter().flat_map(|run| gate_calls(run)).collect();
        if calls.is_empty() {
            continue;
        }
        let mut outputs = BTreeMap::new();
        for call in &calls {
            assert_offline_or_online(&place, call);
            let (format, destination) = check_gate_call(&place, call);
            outputs.insert(format, destination.unwrap_or_default());
        }
        // The JUnit report is written whatever the verdict, and published
        // even when the gate failed the step.
        let junit = outputs.get("junit").unwrap_or_else(|| panic!("{place}: no JUnit report: {outputs:?}"));
        let runs_text = runs.join("\n");
        assert!(runs_text.contains(&format!("> {junit} || true")), "{place}: a failing gate must still write {junit}");
        let publisher = jobs[&job]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|step| step["uses"].as_str().is_some_and(|uses| uses.contains("junit")))
            .unwrap_or_else(|| panic!("{place}: no step publishes {junit}"));
        assert_eq!(publisher["with"]["report_paths"], junit.as_str(), "{place}: the published report");
        let condition = publisher["if"].as_str().unwrap_or("");
        assert!(
            condition.contains("!cancelled()") || condition.contains("always()"),
            "{place}: the report is published only on success"
        );
        assert_eq!(
            outputs.get("markdown").map(String::as_str),
            Some("$GITHUB_STEP_SUMMARY"),
            "{place}: the table goes to the job summary"
        );
        gate_jobs.insert(job.clone(), calls.iter().any(|call| call.iter().any(|word| word == "--from")));
    }
    assert_eq!(gate_jobs.values().filter(|online| !**online).count(), 1, "one offline gate: {gate_jobs:?}");
    assert_eq!(gate_jobs.values().filter(|online| **online).count(), 1, "one online (canary) gate: {gate_jobs:?}");

    let promote = &jobs["promote"];
    assert!(promote.get("if").is_none(), "promote runs only when everything before it succeeded");
    let rollback = &jobs["rollback"];
    assert!(rollback["if"].as_str().unwrap_or("").contains("failure()"), "rollback runs when a gate failed");
    for gate_job in gate_jobs.keys() {
        assert!(ancestors(&needs_of, "promote").contains(gate_job), "promote does not wait for {gate_job}");
    }
    let online_gate = gate_jobs.iter().find(|(_, online)| **online).unwrap().0;
    assert!(ancestors(&needs_of, "rollback").contains(online_gate), "rollback does not follow {online_gate}");
}

#[test]
fn the_gitlab_pipeline_gates_then_promotes_or_rolls_back() {
    let pipeline = yaml(GITLAB_PIPELINE);
    let stages: Vec<String> = names(&pipeline["stages"]);
    let stage_of = |job: &str| {
        let stage = pipeline[job]["stage"].as_str().unwrap_or_else(|| panic!("job {job} has no stage"));
        stages.iter().position(|s| s == stage).unwrap_or_else(|| panic!("job {job}: stage {stage} is not in stages"))
    };
    let scripts = gitlab_scripts(&pipeline);
    let needs_of: BTreeMap<String, Vec<String>> =
        scripts.keys().map(|name| (name.clone(), names(&pipeline[name.as_str()]["needs"]))).collect();
    for (job, needs) in &needs_of {
        for need in needs {
            assert!(scripts.contains_key(need), "job {job} needs {need}, which is not a job");
            assert!(stage_of(need) <= stage_of(job), "job {job} needs {need} of a later stage");
        }
    }
    let mut gate_jobs = BTreeMap::new();
    for (job, script) in &scripts {
        let place = format!("{GITLAB_PIPELINE}: job {job}");
        let calls = gate_calls(script);
        if calls.is_empty() {
            continue;
        }
        let mut outputs = BTreeMap::new();
        for call in &calls {
            assert_offline_or_online(&place, call);
            let (format, destination) = check_gate_call(&place, call);
            outputs.insert(format, destination.unwrap_or_default());
        }
        let junit = outputs.get("junit").unwrap_or_else(|| panic!("{place}: no JUnit report: {outputs:?}"));
        assert!(script.contains(&format!("> {junit} || true")), "{place}: a failing gate must still write {junit}");
        let artifacts = &pipeline[job.as_str()]["artifacts"];
        assert_eq!(artifacts["reports"]["junit"], junit.as_str(), "{place}: artifacts:reports:junit");
        assert_eq!(artifacts["when"], "always", "{place}: the report is kept when the gate fails");
        // The image's entrypoint is driftwatch itself: GitLab needs it empty.
        let image = &pipeline[pipeline[job.as_str()]["extends"].as_str().unwrap_or(job)]["image"];
        assert_eq!(image["entrypoint"], serde_json::json!([""]), "{place}: driftwatch's image needs entrypoint [\"\"]");
        gate_jobs.insert(job.clone(), calls.iter().any(|call| call.iter().any(|word| word == "--from")));
    }
    assert_eq!(gate_jobs.values().filter(|online| !**online).count(), 1, "one offline gate: {gate_jobs:?}");
    assert_eq!(gate_jobs.values().filter(|online| **online).count(), 1, "one online (canary) gate: {gate_jobs:?}");

    assert_eq!(pipeline["promote"]["when"], "on_success", "promote runs only when everything before it succeeded");
    assert_eq!(pipeline["rollback"]["when"], "on_failure", "rollback runs when a gate failed");
    for gate_job in gate_jobs.keys() {
        assert!(ancestors(&needs_of, "promote").contains(gate_job), "promote does not wait for {gate_job}");
        assert!(stage_of(gate_job) < stage_of("promote"), "promote's stage comes after {gate_job}'s");
    }
    let online_gate = gate_jobs.iter().find(|(_, online)| **online).unwrap().0;
    assert!(ancestors(&needs_of, "rollback").contains(online_gate), "rollback does not follow {online_gate}");
}
