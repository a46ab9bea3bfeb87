"""SageMaker Debugger request parts: built-in rules, DebugHookConfig, profiler and its report.

The built-in rules (LossNotDecreasing, VanishingGradient, Overfit, Overtraining,
PoorWeightInitialization) and ProfilerReport run in AWS's rule-evaluator containers, one ECR
account per region. The table below is AWS's published "Amazon SageMaker Debugger Registry URLs
for Built-in Rule Evaluators" (the SageMaker Python SDK ships the same one in
``image_uri_config/debugger.json``). A region missing from it can be given with
``--rule-image URI`` / ``SMCTL_RULE_IMAGE``.

Opt-in: only ``train --debugger`` (or ``debugger = true``) puts any of this in the request;
by default the training code's own rules and profiler report run in the container instead
(SageMaker Debugger is closed to new customers; README "SageMaker Debugger").
"""

from __future__ import annotations

from typing import Any

from smctl.errors import ConfigError

RULES_REPOSITORY = "sagemaker-debugger-rules"
RULES_TAG = "latest"

#: region -> AWS account that hosts the built-in rule evaluator image.
RULE_EVALUATOR_ACCOUNTS: dict[str, str] = {
    "af-south-1": "314341159256",
    "ap-east-1": "199566480951",
    "ap-northeast-1": "430734990657",
    "ap-northeast-2": "578805364391",
    "ap-northeast-3": "364406365360",
    "ap-south-1": "904829902805",
    "ap-southeast-1": "972752614525",
    "ap-southeast-2": "184798709955",
    "ca-central-1": "519511493484",
    "cn-north-1": "618459771430",
    "cn-northwest-1": "658757709296",
    "eu-central-1": "482524230118",
    "eu-north-1": "314864569078",
    "eu-south-1": "563282790590",
    "eu-west-1": "929884845733",
    "eu-west-2": "250201462417",
    "eu-west-3": "447278800020",
    "me-south-1": "986000313247",
    "sa-east-1": "818342061345",
    "us-east-1": "503895931360",
    "us-east-2": "915447279597",
    "us-gov-west-1": "515509971035",
    "us-west-1": "685455198987",
    "us-west-2": "895741380848",
}

#: The seed's rules: CLI name -> (rule_to_invoke, the tensor collection it reads). Rule
#: parameters and collections follow smdebug_rulesconfig (what the SageMaker SDK sends).
BUILTIN_RULES: dict[str, tuple[str, str]] = {
    "loss_not_decreasing": ("LossNotDecreasing", "losses"),
    "vanishing_gradient": ("VanishingGradient", "gradients"),
    "overfit": ("Overfit", "losses"),
    "overtraining": ("Overtraining", "losses"),
    "poor_weight_initialization": ("PoorWeightInitialization", "relu_input"),
}

#: CollectionParameters per collection. smdebug_rulesconfig saves every 500 steps; the dog set
#: has ~50 steps per epoch at batch 128, so losses and gradients are sampled more often.
#: relu_input (PoorWeightInitialization) stays at 500: ResNet activations cost hundreds of MB
#: per saved step, and the rule looks at initialisation (step 0).
COLLECTIONS: dict[str, dict[str, str]] = {
    "losses": {"save_interval": "10"},
    "gradients": {"save_interval": "100"},
    "relu_input": {"include_regex": ".*relu_input", "save_interval": "500"},
}


def rule_evaluator_image(region: str, override: str | None = None) -> str:
    if override:
        return override
    account = RULE_EVALUATOR_ACCOUNTS.get(region)
    if account is None:
        raise ConfigError(f"no Debugger rule evaluator image known for region {region}",
                          "pass --rule-image URI (see AWS docs 'Docker images for Debugger rules') "
                          "or drop --debugger")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/{RULES_REPOSITORY}:{RULES_TAG}"


def parse_rules(spec: str | None) -> list[str]:
    """``"all"``/None -> every seed rule; else a comma list of names from BUILTIN_RULES."""
    if spec in (None, "", "all"):
        return list(BUILTIN_RULES)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in BUILTIN_RULES]
    if bad:
        raise ConfigError(f"unknown Debugger rule(s): {', '.join(bad)}",
                          f"choose from: {', '.join(BUILTIN_RULES)}")
    return names


def debugger_request(*, region: str, rules: list[str], debug_s3: str, profiler_s3: str | None,
                     rule_image: str | None = None,
                     rule_instance_type: str | None = None) -> dict[str, Any]:
    """The CreateTrainingJob fields for the rules, the tensor hook and the profiler."""
    image = rule_evaluator_image(region, rule_image)
    out: dict[str, Any] = {}
    if rules:
        collections = sorted({BUILTIN_RULES[r][1] for r in rules})
        out["DebugHookConfig"] = {
            "S3OutputPath": debug_s3,
            "CollectionConfigurations": [
                {"CollectionName": c, "CollectionParameters": dict(COLLECTIONS[c])}
                for c in collections],
        }
        out["DebugRuleConfigurations"] = []
        for r in rules:
            cfg: dict[str, Any] = {
                "RuleConfigurationName": BUILTIN_RULES[r][0],
                "RuleEvaluatorImage": image,
                "RuleParameters": {"rule_to_invoke": BUILTIN_RULES[r][0]},
            }
            if rule_instance_type:
                cfg["InstanceType"] = rule_instance_type
            out["DebugRuleConfigurations"].append(cfg)
    if profiler_s3:
        # System metrics every 500 ms; framework profiling is deprecated for PyTorch 2.x.
        out["ProfilerConfig"] = {"S3OutputPath": profiler_s3,
                                 "ProfilingIntervalInMilliseconds": 500}
        out["ProfilerRuleConfigurations"] = [{
            "RuleConfigurationName": "ProfilerReport",
            "RuleEvaluatorImage": image,
            "RuleParameters": {"rule_to_invoke": "ProfilerReport"},
        }]
    return out
