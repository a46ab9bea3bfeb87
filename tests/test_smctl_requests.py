"""smctl's SageMaker/ECR/S3/logs requests, checked against botocore's service model with Stubbers.

Each test runs the real CLI (``smctl.cli.main``) against stubbed clients: the client validates
every request against the service model, then the Stubber compares it with the expected
parameters and returns a canned response.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest
from botocore.stub import ANY

from imgclf.metrics import METRIC_DEFINITIONS
from smctl.cli import main
from smctl_helpers import (BUCKET, IMAGE, REGION, ROLE, RULE_IMAGE, aws_env, base_args,  # noqa: F401
                           streaming, stubs, tiny_jpeg)

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
ARN = f"arn:aws:sagemaker:{REGION}:123456789012:resource/test"


def channels(prefix=f"s3://{BUCKET}/imgclf/data/dogImages"):
    return [{"ChannelName": s, "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": f"{prefix}/{s}/",
        "S3DataDistributionType": "FullyReplicated"}}} for s in ("train", "valid", "test")]


ALGO = {"TrainingImage": IMAGE, "TrainingInputMode": "File",
        "MetricDefinitions": METRIC_DEFINITIONS}


# -- tune ----------------------------------------------------------------------------------------
def test_tune_seed_ranges_bayesian_spot(stubs, capsys):
    expected = {
        "HyperParameterTuningJobName": "dogs-tune-1",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Minimize",
                                                 "MetricName": "average test loss"},
            "ResourceLimits": {"MaxParallelTrainingJobs": 3, "MaxNumberOfTrainingJobs": 6},
            "ParameterRanges": {
                "ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.001",
                                               "MaxValue": "0.01", "ScalingType": "Logarithmic"}],
                "CategoricalParameterRanges": [{"Name": "batch-size",
                                                "Values": ["128", "256", "512"]}]},
            "TrainingJobEarlyStoppingType": "Auto",
        },
        "TrainingJobDefinition": {
            "AlgorithmSpecification": ALGO,
            "RoleArn": ROLE,
            "InputDataConfig": channels(),
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/imgclf/output"},
            "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                               "VolumeSizeInGB": 50},
            "StoppingCondition": {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400},
            "EnableManagedSpotTraining": True,
            "StaticHyperParameters": {"epochs": "5", "amp": "bf16"},
        },
    }
    stubs["sagemaker"].add_response("create_hyper_parameter_tuning_job",
                                    {"HyperParameterTuningJobArn": ARN}, expected)
    rc = main(["tune", *base_args(), "--image-uri", IMAGE, "--name", "dogs-tune-1", "--spot",
               "--max-runtime", "7200", "--max-wait", "14400", "--max-jobs", "6",
               "--max-parallel-jobs", "3", "--hp", "epochs=5", "--hp", "amp=bf16",
               "--hp", "batch_size=64"],  # the tuned batch-size given as static is dropped

              client_factory=stubs)
    assert rc == 0
    cap = capsys.readouterr()
    assert "started tuning job dogs-tune-1" in cap.out
    assert "static batch-size=64 dropped: batch-size is tuned" in cap.err


def test_tune_ranges_and_strategy_from_config(stubs, aws_env):
    (aws_env / "smctl.toml").write_text(f'''
region = "{REGION}"
role_arn = "{ROLE}"
bucket = "{BUCKET}"
prefix = "exp/dogs"
image_uri = "{IMAGE}"
train_instance_type = "ml.g5.xlarge"
[hyperparameters]
epochs = 3
freeze-backbone = true
[tune]
strategy = "Random"
max_jobs = 10
max_parallel_jobs = 5
early_stopping = "Off"
[tune.ranges]
lr = {{ type = "continuous", min = 0.0001, max = 0.1, scaling = "Logarithmic" }}
epochs = {{ type = "integer", min = 2, max = 8 }}
optimizer = {{ type = "categorical", values = ["sgd", "adamw"] }}
''')
    def check(params):
        cfg = params["HyperParameterTuningJobConfig"]
        assert cfg["Strategy"] == "Random" and cfg["TrainingJobEarlyStoppingType"] == "Off"
        assert cfg["ResourceLimits"] == {"MaxParallelTrainingJobs": 5, "MaxNumberOfTrainingJobs": 10}
        assert cfg["ParameterRanges"] == {
            "ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1",
                                           "ScalingType": "Logarithmic"}],
            "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "2", "MaxValue": "8",
                                        "ScalingType": "Auto"}],
            "CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["sgd", "adamw"]}]}
        d = params["TrainingJobDefinition"]
        assert d["StaticHyperParameters"] == {"freeze-backbone": "true"}  # epochs is tuned
        assert d["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
        assert d["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == \
            f"s3://{BUCKET}/exp/dogs/data/dogImages/train/"
        assert "EnableManagedSpotTraining" not in d
        name = params["HyperParameterTuningJobName"]
        assert name.startswith("imgclf-") and len(name) <= 32
        return True

    captured = {}
    stubs["sagemaker"].add_response("create_hyper_parameter_tuning_job",
                                    {"HyperParameterTuningJobArn": ARN},
                                    {"HyperParameterTuningJobName": ANY,
                                     "HyperParameterTuningJobConfig": ANY,
                                     "TrainingJobDefinition": ANY})
    stubs.client("sagemaker").meta.events.register(
        "provide-client-params.sagemaker.CreateHyperParameterTuningJob",
        lambda params, **kw: captured.update(params))
    assert main(["tune"], client_factory=stubs) == 0
    assert check(captured)


def test_tune_completion_criteria_and_seed_and_local_only_flags(aws_env, capsys):
    assert main(["tune", *base_args(), "--image-uri", IMAGE, "--dry-run", "--seed", "7",
                 "--target-objective", "0.5", "--max-jobs-not-improving", "3"],
                client_factory=_no_clients) == 0
    cfg = json.loads(capsys.readouterr().out)[0]["request"]["HyperParameterTuningJobConfig"]
    assert cfg["RandomSeed"] == 7
    assert cfg["TuningJobCompletionCriteria"] == {
        "TargetObjectiveMetricValue": 0.5,
        "BestObjectiveNotImproving": {"MaxNumberOfTrainingJobsNotImproving": 3}}
    assert main(["tune", *base_args(), "--image-uri", IMAGE, "--dry-run", "--runner", "host"],
                client_factory=_no_clients) == 2
    assert "--runner only apply to a local study - add --local" in capsys.readouterr().err
    assert main(["tune", "--local", "--spot", "--data", "x"], client_factory=_no_clients) == 2
    assert "--spot only apply to a SageMaker tuning job" in capsys.readouterr().err


def test_grid_needs_categorical_ranges(aws_env, capsys):
    rc = main(["tune", *base_args(), "--image-uri", IMAGE, "--strategy", "Grid", "--dry-run"])
    assert rc == 2
    assert "Grid search takes categorical ranges only" in capsys.readouterr().err


def test_tune_wait_then_best_table(stubs, capsys):
    sm = stubs["sagemaker"]
    sm.add_response("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": ARN},
                    {"HyperParameterTuningJobName": "t2", "HyperParameterTuningJobConfig": ANY,
                     "TrainingJobDefinition": ANY})
    config = {"Strategy": "Bayesian", "ResourceLimits": {"MaxParallelTrainingJobs": 2},
              "HyperParameterTuningJobObjective": {"Type": "Minimize",
                                                   "MetricName": "average test loss"}}
    definition = {"AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": IMAGE},
                  "RoleArn": ROLE, "OutputDataConfig": {"S3OutputPath": "s3://b/o"},
                  "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
                  "StaticHyperParameters": {"epochs": "5", "_tuning_objective_metric": "x"}}

    def describe(status, counters, best=None):
        r = {"HyperParameterTuningJobName": "t2", "HyperParameterTuningJobArn": ARN,
             "HyperParameterTuningJobConfig": config, "TrainingJobDefinition": definition,
             "HyperParameterTuningJobStatus": status, "CreationTime": T0,
             "TrainingJobStatusCounters": counters, "ObjectiveStatusCounters": {}}
        if best:
            r["BestTrainingJob"] = best
        return r
    best = {"TrainingJobName": "t2-002-abc", "TrainingJobArn": ARN, "CreationTime": T0,
            "TrainingJobStatus": "Completed", "TunedHyperParameters": {"lr": "0.0042",
                                                                       "batch-size": "256"},
            "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "average test loss",
                                                            "Value": 0.61}}
    sm.add_response("describe_hyper_parameter_tuning_job",
                    describe("InProgress", {"InProgress": 2}), {"HyperParameterTuningJobName": "t2"})
    sm.add_response("describe_hyper_parameter_tuning_job",
                    describe("Completed", {"Completed": 2}, best),
                    {"HyperParameterTuningJobName": "t2"})
    other = {**best, "TrainingJobName": "t2-001-abc", "TrainingJobArn": ARN,
             "TunedHyperParameters": {"lr": "0.009", "batch-size": "512"},
             "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "average test loss",
                                                             "Value": 0.93},
             "TrainingStartTime": T0, "TrainingEndTime": T0 + timedelta(seconds=600)}
    sm.add_response("list_training_jobs_for_hyper_parameter_tuning_job",
                    {"TrainingJobSummaries": [best, other]},
                    {"HyperParameterTuningJobName": "t2", "SortBy": "FinalObjectiveMetricValue",
                     "SortOrder": "Ascending", "MaxResults": 10})
    rc = main(["tune", *base_args(), "--image-uri", IMAGE, "--name", "t2", "--wait",
               "--poll-seconds", "0"], client_factory=stubs)
    assert rc == 0
    cap = capsys.readouterr()
    assert "InProgress: 0 completed, 2 in progress" in cap.err
    assert "best average test loss=0.6100 (t2-002-abc)" in cap.err
    lines = cap.out.splitlines()
    header = next(l for l in lines if l.startswith("batch-size"))
    assert header.split() == ["batch-size", "lr", "FinalObjectiveValue", "TrainingJobName",
                              "TrainingJobStatus", "TrainingStartTime", "TrainingEndTime",
                              "TrainingElapsedTimeSeconds"]
    row = next(l for l in lines if "t2-001-abc" in l)
    assert row.split()[:3] == ["512", "0.009", "0.9300"] and row.rstrip().endswith("600")
    assert "best training job: t2-002-abc  average test loss=0.6100" in cap.out
    # the best job's full hyperparameters: static + tuned, internal ones dropped
    assert any(l.split() == ["epochs", "5"] for l in lines)
    assert any(l.split() == ["lr", "0.0042"] for l in lines)
    assert "_tuning_objective_metric" not in cap.out


# -- train -----------------------------------------------------------------------------------------
RULES = [("LossNotDecreasing"), ("VanishingGradient"), ("Overfit"), ("Overtraining"),
         ("PoorWeightInitialization")]


def test_train_with_debugger_rules_and_profiler(stubs):
    expected = {
        "TrainingJobName": "dogs-1",
        "AlgorithmSpecification": ALGO,
        "RoleArn": ROLE,
        "InputDataConfig": channels(f"s3://{BUCKET}/imgclf/data/mine") + [
            {"ChannelName": "pretrained", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/weights/resnet18.pth",
                "S3DataDistributionType": "FullyReplicated"}}}],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/imgclf/output"},
        "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                           "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
        "HyperParameters": {"epochs": "8", "lr": "0.003", "weights": "/opt/ml/input/data/pretrained/resnet18.pth"},
        "DebugHookConfig": {
            "S3OutputPath": f"s3://{BUCKET}/imgclf/debug-output",
            "CollectionConfigurations": [
                {"CollectionName": "gradients", "CollectionParameters": {"save_interval": "100"}},
                {"CollectionName": "losses", "CollectionParameters": {"save_interval": "10"}},
                {"CollectionName": "relu_input", "CollectionParameters": {
                    "include_regex": ".*relu_input", "save_interval": "500"}}]},
        "DebugRuleConfigurations": [
            {"RuleConfigurationName": r, "RuleEvaluatorImage": RULE_IMAGE,
             "RuleParameters": {"rule_to_invoke": r}} for r in RULES],
        "ProfilerConfig": {"S3OutputPath": f"s3://{BUCKET}/imgclf/profiler-output",
                           "ProfilingIntervalInMilliseconds": 500},
        "ProfilerRuleConfigurations": [
            {"RuleConfigurationName": "ProfilerReport", "RuleEvaluatorImage": RULE_IMAGE,
             "RuleParameters": {"rule_to_invoke": "ProfilerReport"}}],
    }
    stubs["sagemaker"].add_response("create_training_job", {"TrainingJobArn": ARN}, expected)
    rc = main(["train", *base_args(), "--image-uri", IMAGE, "--name", "dogs-1",
               "--data", f"s3://{BUCKET}/imgclf/data/mine/",
               "--pretrained", f"s3://{BUCKET}/weights/resnet18.pth",
               "--hp", "epochs=8", "--hp", "lr=0.003",
               "--hp", "weights=/opt/ml/input/data/pretrained/resnet18.pth", "--debugger"],
              client_factory=stubs)
    assert rc == 0


def test_train_spot_checkpoints_without_debugger(stubs, capsys):
    expected = {
        "TrainingJobName": "dogs-spot",
        "AlgorithmSpecification": ALGO,
        "RoleArn": ROLE,
        "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/imgclf/data/dogImages/",
            "S3DataDistributionType": "FullyReplicated"}}}],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/imgclf/output"},
        "ResourceConfig": {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1,
                           "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 10800},
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": f"s3://{BUCKET}/imgclf/checkpoints/dogs-spot",
                             "LocalPath": "/opt/ml/checkpoints"},
    }
    stubs["sagemaker"].add_response("create_training_job", {"TrainingJobArn": ARN}, expected)
    rc = main(["train", *base_args(), "--image-uri", IMAGE, "--name", "dogs-spot",
               "--single-channel", "--instance-type", "ml.p3.2xlarge", "--spot",
               "--max-runtime", "3600", "--max-wait", "10800", "--no-debugger"],
              client_factory=stubs)
    assert rc == 0
    assert "smctl status dogs-spot" in capsys.readouterr().out


def test_spot_max_wait_shorter_than_runtime_is_refused(aws_env, capsys):
    rc = main(["train", *base_args(), "--image-uri", IMAGE, "--spot", "--max-runtime", "7200",
               "--max-wait", "3600", "--dry-run"])
    assert rc == 2
    assert "spot needs max-wait >= max-runtime" in capsys.readouterr().err


def test_train_from_best_of_tuning(stubs, aws_env):
    (aws_env / "smctl.toml").write_text('[hyperparameters]\nepochs = 20\npatience = 3\n')
    sm = stubs["sagemaker"]
    sm.add_response("describe_hyper_parameter_tuning_job", {
        "HyperParameterTuningJobName": "t3", "HyperParameterTuningJobArn": ARN,
        "HyperParameterTuningJobConfig": {"Strategy": "Bayesian",
                                          "ResourceLimits": {"MaxParallelTrainingJobs": 2}},
        "TrainingJobDefinition": {
            "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": IMAGE},
            "RoleArn": ROLE, "OutputDataConfig": {"S3OutputPath": "s3://b/o"},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
            "StaticHyperParameters": {"epochs": "5", "_tuning_objective_metric": "average test loss",
                                      "sagemaker_estimator_module": "x"}},
        "HyperParameterTuningJobStatus": "Completed", "CreationTime": T0,
        "TrainingJobStatusCounters": {}, "ObjectiveStatusCounters": {},
        "BestTrainingJob": {"TrainingJobName": "t3-004", "TrainingJobArn": ARN,
                            "CreationTime": T0, "TrainingJobStatus": "Completed",
                            "TunedHyperParameters": {"lr": "0.0042", "batch-size": '"256"'}}},
        {"HyperParameterTuningJobName": "t3"})
    sm.add_response("create_training_job", {"TrainingJobArn": ARN}, {
        "TrainingJobName": "final", "AlgorithmSpecification": ANY, "RoleArn": ROLE,
        "InputDataConfig": ANY, "OutputDataConfig": ANY, "ResourceConfig": ANY,
        "StoppingCondition": ANY,
        # config < tuning's static + tuned < --hp
        "HyperParameters": {"epochs": "5", "patience": "3", "lr": "0.0042", "batch-size": "256",
                            "seed": "7"}})
    rc = main(["train", *base_args(), "--image-uri", IMAGE, "--name", "final",
               "--from-tuning", "t3", "--hp", "seed=7", "--no-debugger"], client_factory=stubs)
    assert rc == 0


def _job(status, secondary, **extra):
    return {"TrainingJobName": "dogs-2", "TrainingJobArn": ARN, "TrainingJobStatus": status,
            "SecondaryStatus": secondary, "CreationTime": T0,
            "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": IMAGE},
            "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                               "VolumeSizeInGB": 50},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/imgclf/output/dogs-2/output/model.tar.gz"},
            **extra}


def test_train_wait_streams_logs_and_shows_rule_results(stubs, capsys):
    sm, logs = stubs["sagemaker"], stubs["logs"]
    sm.add_response("create_training_job", {"TrainingJobArn": ARN},
                    {"TrainingJobName": "dogs-2", "AlgorithmSpecification": ANY, "RoleArn": ROLE,
                     "InputDataConfig": ANY, "OutputDataConfig": ANY, "ResourceConfig": ANY,
                     "StoppingCondition": ANY, "DebugHookConfig": ANY,
                     "DebugRuleConfigurations": ANY, "ProfilerConfig": ANY,
                     "ProfilerRuleConfigurations": ANY})
    streams_req = {"logGroupName": "/aws/sagemaker/TrainingJobs",
                   "logStreamNamePrefix": "dogs-2/", "orderBy": "LogStreamName"}
    stream = "dogs-2/algo-1-1700000000"
    # poll 1: still starting, no log group yet
    sm.add_response("describe_training_job", _job("InProgress", "Starting"),
                    {"TrainingJobName": "dogs-2"})
    logs.add_client_error("describe_log_streams", "ResourceNotFoundException",
                          "The specified log group does not exist.", 400,
                          expected_params=streams_req)
    # poll 2: training, two log lines
    sm.add_response("describe_training_job", _job("InProgress", "Training",
                    SecondaryStatusTransitions=[{"Status": "Training", "StartTime": T0,
                                                 "StatusMessage": "Training image download completed."}]),
                    {"TrainingJobName": "dogs-2"})
    logs.add_response("describe_log_streams", {"logStreams": [{"logStreamName": stream}]}, streams_req)
    logs.add_response("get_log_events", {
        "events": [{"timestamp": 1, "message": "epoch=1 train_loss=2.1 valid_loss=2.0"},
                   {"timestamp": 2, "message": "epoch=2 train_loss=1.5 valid_loss=1.6"}],
        "nextForwardToken": "f/2", "nextBackwardToken": "b/1"},
        {"logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamName": stream,
         "startFromHead": True})
    logs.add_response("get_log_events", {"events": [], "nextForwardToken": "f/2",
                                         "nextBackwardToken": "b/2"},
                      {"logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamName": stream,
                       "startFromHead": True, "nextToken": "f/2"})
    # poll 3: completed, one more line, then the drain poll
    done = _job("Completed", "Completed", TrainingStartTime=T0,
                TrainingEndTime=T0 + timedelta(minutes=20), BillableTimeInSeconds=1200,
                FinalMetricDataList=[{"MetricName": "average test loss", "Value": 0.61,
                                      "Timestamp": T0}],
                ProfilerConfig={"S3OutputPath": f"s3://{BUCKET}/imgclf/profiler-output"},
                DebugRuleEvaluationStatuses=[
                    {"RuleConfigurationName": "LossNotDecreasing", "RuleEvaluationStatus": "NoIssuesFound"},
                    {"RuleConfigurationName": "Overfit", "RuleEvaluationStatus": "IssuesFound",
                     "StatusDetails": "RuleEvaluationConditionMet: Evaluation of the rule Overfit "
                                      "at step 500 resulted in the condition being met"}],
                ProfilerRuleEvaluationStatuses=[
                    {"RuleConfigurationName": "ProfilerReport", "RuleEvaluationStatus": "NoIssuesFound"}])
    sm.add_response("describe_training_job", done, {"TrainingJobName": "dogs-2"})
    logs.add_response("describe_log_streams", {"logStreams": [{"logStreamName": stream}]}, streams_req)
    logs.add_response("get_log_events", {
        "events": [{"timestamp": 3, "message": "average test loss=0.6100 test_acc=0.8100\n"}],
        "nextForwardToken": "f/3", "nextBackwardToken": "b/3"},
        {"logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamName": stream,
         "startFromHead": True, "nextToken": "f/2"})
    logs.add_response("get_log_events", {"events": [], "nextForwardToken": "f/3",
                                         "nextBackwardToken": "b/3"},
                      {"logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamName": stream,
                       "startFromHead": True, "nextToken": "f/3"})
    logs.add_response("describe_log_streams", {"logStreams": [{"logStreamName": stream}]}, streams_req)
    logs.add_response("get_log_events", {"events": [], "nextForwardToken": "f/3",
                                         "nextBackwardToken": "b/3"},
                      {"logGroupName": "/aws/sagemaker/TrainingJobs", "logStreamName": stream,
                       "startFromHead": True, "nextToken": "f/3"})

    rc = main(["train", *base_args(), "--image-uri", IMAGE, "--name", "dogs-2", "--wait", "--debugger",
               "--poll-seconds", "0"], client_factory=stubs)
    assert rc == 0
    cap = capsys.readouterr()
    out = cap.out.splitlines()
    assert "epoch=1 train_loss=2.1 valid_loss=2.0" in out
    assert "average test loss=0.6100 test_acc=0.8100" in out
    assert out.count("epoch=2 train_loss=1.5 valid_loss=1.6") == 1  # no line printed twice
    assert "[dogs-2] InProgress / Training: Training image download completed." in cap.err
    assert "metrics      average test loss=0.61" in cap.out
    overfit = next(l for l in out if l.startswith("Overfit"))
    assert overfit.split()[1] == "IssuesFound" and "step 500" in overfit
    assert any(l.split()[:2] == ["ProfilerReport", "NoIssuesFound"] for l in out)
    assert "profiler-output/dogs-2/rule-output/ProfilerReport/profiler-output/" \
           "profiler-report.html" in cap.out


def test_status_of_failed_job_exits_nonzero(stubs, capsys):
    stubs["sagemaker"].add_response("describe_training_job", _job(
        "Failed", "Failed", FailureReason="AlgorithmError: CUDA out of memory"),
        {"TrainingJobName": "dogs-2"})
    rc = main(["status", "dogs-2", "--region", REGION], client_factory=stubs)
    assert rc == 1
    assert "failure      AlgorithmError: CUDA out of memory" in capsys.readouterr().out


# -- deploy ------------------------------------------------------------------------------------------
def test_deploy_creates_gpu_endpoint_with_ami_and_capture(stubs, capsys, monkeypatch):
    sm = stubs["sagemaker"]
    sm.add_response("describe_training_job", _job("Completed", "Completed"),
                    {"TrainingJobName": "dogs-2"})
    sm.add_client_error("describe_endpoint", "ValidationException",
                        'Could not find endpoint "dogs-ep".', 400,
                        expected_params={"EndpointName": "dogs-ep"})
    model = {"ModelName": ANY, "ExecutionRoleArn": ROLE,
             "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl":
                                  f"s3://{BUCKET}/imgclf/output/dogs-2/output/model.tar.gz",
                                  "Environment": {"IMGCLF_DEFAULT_TOPK": "3"}}}
    sm.add_response("create_model", {"ModelArn": ARN}, model)
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": ARN}, {
        "EndpointConfigName": ANY,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": ANY,
                                "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 2,
                                "InitialVariantWeight": 1.0,
                                "InferenceAmiVersion": "al2-ami-sagemaker-inference-gpu-3-1"}],
        "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 20,
                              "DestinationS3Uri": f"s3://{BUCKET}/imgclf/data-capture/dogs-ep",
                              "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                              "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}})
    sm.add_response("create_endpoint", {"EndpointArn": ARN},
                    {"EndpointName": "dogs-ep", "EndpointConfigName": ANY})
    ep = {"EndpointName": "dogs-ep", "EndpointArn": ARN, "CreationTime": T0,
          "LastModifiedTime": T0}
    sm.add_response("describe_endpoint", {**ep, "EndpointStatus": "Creating"},
                    {"EndpointName": "dogs-ep"})

    names = {}
    stubs.client("sagemaker").meta.events.register(
        "provide-client-params.sagemaker.CreateEndpoint", lambda params, **kw: names.update(params))

    def sleep(self):  # between polls: the endpoint comes up on the config just created
        stubs["sagemaker"].add_response(
            "describe_endpoint", {**ep, "EndpointStatus": "InService",
                                  "EndpointConfigName": names["EndpointConfigName"]},
            {"EndpointName": "dogs-ep"})
    monkeypatch.setattr("smctl.util.Poller.sleep", sleep)
    rc = main(["deploy", *base_args(), "--image-uri", IMAGE, "--training-job", "dogs-2",
               "--endpoint", "dogs-ep", "--instance-type", "ml.g5.xlarge",
               "--instance-count", "2", "--env", "IMGCLF_DEFAULT_TOPK=3",
               "--data-capture", "--capture-percent", "20", "--wait"], client_factory=stubs)
    assert rc == 0
    cap = capsys.readouterr()
    assert "creating endpoint dogs-ep" in cap.out and "is InService" in cap.out
    assert names["EndpointConfigName"].startswith("dogs-ep-")


def test_deploy_updates_existing_cpu_endpoint(stubs, capsys):
    sm = stubs["sagemaker"]
    sm.add_response("describe_endpoint", {"EndpointName": "dogs-ep", "EndpointArn": ARN,
                                          "EndpointStatus": "InService", "CreationTime": T0,
                                          "LastModifiedTime": T0}, {"EndpointName": "dogs-ep"})
    sm.add_response("create_model", {"ModelArn": ARN}, {
        "ModelName": ANY, "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": "s3://b/m/model.tar.gz"}})
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": ARN}, {
        "EndpointConfigName": ANY,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": ANY,
                                "InstanceType": "ml.m5.large", "InitialInstanceCount": 1,
                                "InitialVariantWeight": 1.0}]})  # CPU: no InferenceAmiVersion
    sm.add_response("update_endpoint", {"EndpointArn": ARN},
                    {"EndpointName": "dogs-ep", "EndpointConfigName": ANY})
    rc = main(["deploy", *base_args(), "--image-uri", IMAGE, "--model-data",
               "s3://b/m/model.tar.gz", "--endpoint", "dogs-ep", "--instance-type", "ml.m5.large"],
              client_factory=stubs)
    assert rc == 0
    assert "updating endpoint dogs-ep" in capsys.readouterr().out


# -- invoke ------------------------------------------------------------------------------------------
def test_invoke_endpoint_sends_image_with_its_content_type(stubs, aws_env, capsys):
    jpeg = tiny_jpeg()
    (aws_env / "dog.bin").write_bytes(jpeg)  # content type from the bytes, not the name
    answer = {"predictions": [{"label": "001.Affenpinscher", "index": 0, "probability": 0.9,
                               "topk": [{"label": "001.Affenpinscher", "index": 0, "probability": 0.9},
                                        {"label": "002.Afghan_hound", "index": 1, "probability": 0.07}]}]}
    stubs["sagemaker-runtime"].add_response(
        "invoke_endpoint", {"Body": streaming(json.dumps(answer).encode()),
                            "ContentType": "application/json"},
        {"EndpointName": "dogs-ep", "ContentType": "image/jpeg", "Accept": "application/json",
         "CustomAttributes": "topk=2", "Body": jpeg})
    rc = main(["invoke", "dog.bin", "--region", REGION, "--endpoint", "dogs-ep", "--top-k", "2"],
              client_factory=stubs)
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dog.bin:"
    assert out[2].split() == ["1", "001.Affenpinscher", "0.9000"]
    assert out[3].split() == ["2", "002.Afghan_hound", "0.0700"]


def test_invoke_model_error_is_one_line(stubs, aws_env, capsys):
    (aws_env / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    stubs["sagemaker-runtime"].add_client_error(
        "invoke_endpoint", "ModelError", "Received client error (400) from primary: bad image",
        424, expected_params={"EndpointName": "dogs-ep", "ContentType": "image/png",
                              "Accept": "application/json", "CustomAttributes": "topk=5",
                              "Body": ANY})
    rc = main(["invoke", "x.png", "--region", REGION, "--endpoint", "dogs-ep"], client_factory=stubs)
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ModelError" in err[0] and "CloudWatch logs" in err[0]


# -- cleanup -----------------------------------------------------------------------------------------
def _cleanup_describes(stubs):
    sm = stubs["sagemaker"]
    sm.add_response("describe_endpoint", {"EndpointName": "dogs-ep", "EndpointArn": ARN,
                                          "EndpointConfigName": "dogs-ep-cfg",
                                          "EndpointStatus": "InService", "CreationTime": T0,
                                          "LastModifiedTime": T0}, {"EndpointName": "dogs-ep"})
    sm.add_response("describe_endpoint_config", {
        "EndpointConfigName": "dogs-ep-cfg", "EndpointConfigArn": ARN, "CreationTime": T0,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "dogs-ep-model"}]},
        {"EndpointConfigName": "dogs-ep-cfg"})
    stubs["application-autoscaling"].add_response(  # no autoscaling (tests/test_smctl_hosting.py)
        "describe_scalable_targets", {"ScalableTargets": []},
        {"ServiceNamespace": "sagemaker", "ResourceIds": ["endpoint/dogs-ep/variant/AllTraffic"],
         "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"})


def test_cleanup_deletes_endpoint_config_and_model(stubs, capsys):
    sm = stubs["sagemaker"]
    _cleanup_describes(stubs)
    sm.add_response("delete_endpoint", {}, {"EndpointName": "dogs-ep"})
    sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "dogs-ep-cfg"})
    sm.add_response("delete_model", {}, {"ModelName": "dogs-ep-model"})
    rc = main(["cleanup", "--region", REGION, "--endpoint", "dogs-ep", "--yes"], client_factory=stubs)
    assert rc == 0
    out = capsys.readouterr().out
    assert "deleted model dogs-ep-model" in out


def test_cleanup_without_yes_deletes_nothing(stubs, capsys, monkeypatch):
    _cleanup_describes(stubs)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    rc = main(["cleanup", "--region", REGION, "--endpoint", "dogs-ep"], client_factory=stubs)
    assert rc == 1
    assert "nothing deleted" in capsys.readouterr().out


# -- build-push to ECR (docker replaced by a recording script) ----------------------------------
def test_build_push_creates_repo_logs_in_tags_and_pushes(stubs, aws_env, monkeypatch, capsys):
    log = aws_env / "docker.log"
    fake = aws_env / "fake-docker"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n'
                    f'if [ "$1" = login ]; then echo "stdin=$(cat)" >> {log}; fi\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("DOCKER", str(fake))
    repo_uri = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/dogs"
    ecr = stubs["ecr"]
    ecr.add_client_error("describe_repositories", "RepositoryNotFoundException", "not found", 400,
                         expected_params={"repositoryNames": ["dogs"]})
    ecr.add_response("create_repository", {"repository": {"repositoryUri": repo_uri,
                                                          "repositoryName": "dogs"}},
                     {"repositoryName": "dogs", "imageScanningConfiguration": {"scanOnPush": True},
                      "imageTagMutability": "MUTABLE"})
    ecr.add_response("get_authorization_token", {"authorizationData": [{
        "authorizationToken": base64.b64encode(b"AWS:s3cret-token").decode(),
        "proxyEndpoint": f"https://123456789012.dkr.ecr.{REGION}.amazonaws.com"}]}, {})
    ecr.add_client_error("describe_images", "ImageNotFoundException", "no image", 400,
                         expected_params={"repositoryName": "dogs",
                                          "imageIds": [{"imageTag": "abc123def456"}]})
    rc = main(["build-push", "--region", REGION, "--image", "imgclf:dev", "--repository", "dogs",
               "--tag", "abc123def456", "--latest"], client_factory=stubs)
    assert rc == 0
    assert capsys.readouterr().out.strip() == f"{repo_uri}:abc123def456"
    calls = log.read_text().splitlines()
    assert calls == [
        "image inspect imgclf:dev",
        f"login --username AWS --password-stdin https://123456789012.dkr.ecr.{REGION}.amazonaws.com",
        "stdin=s3cret-token",
        f"tag imgclf:dev {repo_uri}:abc123def456", f"push {repo_uri}:abc123def456",
        f"tag imgclf:dev {repo_uri}:latest", f"push {repo_uri}:latest"]
    state = json.loads((aws_env / "smctl-state.json").read_text())
    assert state["image_uri"] == f"{repo_uri}:abc123def456"


def test_git_tag_is_sha_or_marked_dirty(tmp_path):
    import subprocess
    from smctl.registry import git_tag
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("1")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "x"], check=True, env=env)
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert git_tag(str(tmp_path)) == sha
    (tmp_path / "f").write_text("2")
    dirty = git_tag(str(tmp_path))
    assert dirty.startswith(sha + "-dirty-") and dirty != sha


# -- data upload to S3 -------------------------------------------------------------------------------
def test_data_upload_puts_every_readable_image(stubs, aws_env, capsys):
    root = aws_env / "ds"
    good = tiny_jpeg()
    for split in ("train", "valid", "test"):
        (root / split / "001.Cat").mkdir(parents=True)
        (root / split / "001.Cat" / "a.jpg").write_bytes(good)
    (root / "train" / "001.Cat" / "broken.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "001.Cat" / "notes.txt").write_text("not an image")
    s3 = stubs["s3"]
    s3.add_response("head_bucket", {}, {"Bucket": BUCKET})
    for split in ("test", "train", "valid"):  # sorted order, --jobs 1
        s3.add_response("put_object", {"ETag": '"x"'},
                        {"Bucket": BUCKET, "Key": f"imgclf/data/ds/{split}/001.Cat/a.jpg",
                         "Body": ANY, "ContentType": "image/jpeg"})
    rc = main(["data", "upload", "ds", "--region", REGION, "--bucket", BUCKET, "--jobs", "1"],
              client_factory=stubs)
    assert rc == 0
    cap = capsys.readouterr()
    assert "skipping 1 unreadable file(s)" in cap.err and "broken.jpg" in cap.err
    assert f"uploaded 3 files" in cap.out
    state = json.loads((aws_env / "smctl-state.json").read_text())
    assert state["data_uri"] == f"s3://{BUCKET}/imgclf/data/ds"


# -- dry run: every command prints model-valid requests and sends nothing ------------------------
def _no_clients(service, region):
    raise AssertionError(f"--dry-run created a {service} client")


@pytest.mark.parametrize("argv, operations", [
    (["tune", "--image-uri", IMAGE], ["CreateHyperParameterTuningJob"]),
    (["best", "t1"], ["DescribeHyperParameterTuningJob",
                      "ListTrainingJobsForHyperParameterTuningJob"]),
    (["train", "--image-uri", IMAGE, "--spot"], ["CreateTrainingJob"]),
    (["train", "--image-uri", IMAGE, "--from-tuning", "t1"],
     ["DescribeHyperParameterTuningJob", "CreateTrainingJob"]),
    (["status", "j1"], ["DescribeTrainingJob"]),
    (["logs", "j1"], ["DescribeTrainingJob", "DescribeLogStreams"]),
    (["deploy", "--image-uri", IMAGE, "--model-data", "s3://b/m.tar.gz", "--endpoint", "e1"],
     ["DescribeEndpoint", "CreateModel", "CreateEndpointConfig", "CreateEndpoint"]),
    (["deploy", "--image-uri", IMAGE, "--model-data", "s3://b/m.tar.gz", "--endpoint", "e1",
      "--update"], ["DescribeEndpoint", "CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]),
    (["cleanup", "--endpoint", "e1"], ["DescribeEndpoint", "DescribeEndpointConfig",
                                       "DescribeScalableTargets", "DescribeScalingPolicies",
                                       "DeleteAlarms", "DeregisterScalableTarget",
                                       "DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]),
    (["build-push", "--image", "imgclf:dev", "--tag", "abc"],
     ["DescribeRepositories", "CreateRepository", "GetAuthorizationToken", "docker",
      "DescribeImages", "docker", "docker"]),
])
def test_dry_run_prints_valid_requests_and_sends_nothing(aws_env, capsys, argv, operations):
    rc = main([*argv, *base_args(), "--dry-run"], client_factory=_no_clients)
    assert rc == 0
    reqs = json.loads(capsys.readouterr().out)
    assert [r.get("operation") or r["action"] for r in reqs] == operations
    for r in reqs:
        if "operation" in r:
            assert r["region"] == REGION and isinstance(r["request"], dict)


def test_dry_run_invoke_endpoint_and_url(aws_env, capsys):
    (aws_env / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 10)
    (aws_env / "b.jpg").write_bytes(tiny_jpeg())
    assert main(["invoke", "a.png", "--endpoint", "e1", *base_args(), "--dry-run"],
                client_factory=_no_clients) == 0
    req = json.loads(capsys.readouterr().out)[0]
    assert req["operation"] == "InvokeEndpoint"
    assert req["request"]["ContentType"] == "image/png" and req["request"]["Body"] == "<18 bytes>"
    assert main(["invoke", "a.png", "b.jpg", "--url", "http://127.0.0.1:9", "--dry-run"],
                client_factory=_no_clients) == 0
    req = json.loads(capsys.readouterr().out)[0]
    assert req["action"] == "http" and req["url"] == "http://127.0.0.1:9/invocations"
    assert req["headers"]["Content-Type"] == "application/json"  # two images: one JSON batch


def test_dry_run_rejects_what_botocore_would_reject(aws_env, capsys):
    rc = main(["tune", *base_args(), "--image-uri", IMAGE, "--max-parallel-jobs", "0",
               "--dry-run"], client_factory=_no_clients)
    assert rc == 2
    err = capsys.readouterr().err
    assert "request rejected before sending" in err and "MaxParallelTrainingJobs" in err


def test_rule_images_follow_the_region(aws_env, capsys):
    for region, account, domain in (("eu-west-1", "929884845733", "amazonaws.com"),
                                    ("cn-north-1", "618459771430", "amazonaws.com.cn")):
        assert main(["train", "--image-uri", IMAGE, "--region", region, "--role-arn", ROLE,
                     "--bucket", BUCKET, "--dry-run", "--debugger"]) == 0
        req = json.loads(capsys.readouterr().out)[0]["request"]
        images = {r["RuleEvaluatorImage"] for r in req["DebugRuleConfigurations"]
                  + req["ProfilerRuleConfigurations"]}
        assert images == {f"{account}.dkr.ecr.{region}.{domain}/sagemaker-debugger-rules:latest"}
    rc = main(["train", "--image-uri", IMAGE, "--region", "xx-nowhere-1", "--role-arn", ROLE,
               "--bucket", BUCKET, "--dry-run", "--debugger"])
    assert rc == 2 and "--rule-image" in capsys.readouterr().err


# -- the hyperparameter schema (train.py's parser): refused before anything is sent ------------------
@pytest.mark.parametrize("cmd", ["train", "tune"])
@pytest.mark.parametrize("hp, words", [
    ("epoch=3", "unknown hyperparameter 'epoch' - did you mean epochs"),
    ("batch_szie=64", "unknown hyperparameter 'batch_szie' - did you mean batch-size"),
    ("lr=0", "bad hyperparameter: lr must be > 0, got 0.0"),
    ("optimizer=adam", "bad hyperparameter: argument --optimizer: invalid choice: 'adam'"),
    ("epochs=two", "bad hyperparameter: argument --epochs: invalid int value: 'two'"),
    ("image_size=8", "image-size must be in 16..1024, got 8"),
    ("freeze-backbone=maybe", "expected a boolean"),
])
def test_schema_refuses_bad_hyperparameters_before_sending(aws_env, capsys, cmd, hp, words):
    rc = main([cmd, *base_args(), "--image-uri", IMAGE, "--hp", hp], client_factory=_no_clients)
    assert rc == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smctl: error: ") and words in err[0], err
    assert cap.out == ""


@pytest.mark.parametrize("ranges, words", [
    ('lr = { type = "continuous", min = 0, max = 0.1 }', "lr must be > 0, got 0.0"),
    ('weight_decai = { type = "continuous", min = 0.0, max = 0.1 }',
     "unknown tuned hyperparameter 'weight_decai' - did you mean weight-decay"),
    ('batch-size = { type = "continuous", min = 16, max = 64 }',
     "tune range batch-size: batch-size is an integer"),
    ('optimizer = { type = "categorical", values = ["sgd", "lion"] }', "invalid choice: 'lion'"),
    ('label_smoothing = { type = "continuous", min = 0.0, max = 1.0 }',
     "label-smoothing must be in [0, 1), got 1.0"),
    ('lr = { type = "continuous", min = 0.01, max = 0.001 }', "min 0.01 is not below max 0.001"),
    ('batch_size = { type = "categorical", values = [32] }\n'
     'batch-size = { type = "categorical", values = [64] }', "tune range batch-size is given twice"),
    ('arch = { type = "integer", min = 1, max = 3 }', "tune range arch: arch is not a number"),
])
def test_schema_refuses_bad_ranges_before_sending(aws_env, capsys, ranges, words):
    (aws_env / "smctl.toml").write_text("[tune.ranges]\n" + ranges + "\n")
    rc = main(["tune", *base_args(), "--image-uri", IMAGE], client_factory=_no_clients)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_schema_canonicalises_names_in_train_and_tune(stubs, aws_env):
    """``batch_size`` and ``batch-size`` are one name: config and flags merge by it, a tuned
    name is never also sent static, and ranges are sent in the parser's spelling."""
    (aws_env / "smctl.toml").write_text(
        '[hyperparameters]\nbatch_size = 32\nweight_decay = 0.001\n'
        '[tune.ranges]\nweight_decay = { type = "continuous", min = 0.00001, max = 0.001, '
        'scaling = "Logarithmic" }\n')
    sm = stubs["sagemaker"]
    sm.add_response("create_training_job", {"TrainingJobArn": ARN}, {
        "TrainingJobName": "canon", "AlgorithmSpecification": ANY, "RoleArn": ROLE,
        "InputDataConfig": ANY, "OutputDataConfig": ANY, "ResourceConfig": ANY,
        "StoppingCondition": ANY,
        "HyperParameters": {"batch-size": "64", "weight-decay": "0.001", "lr-schedule": "step"}})
    assert main(["train", *base_args(), "--image-uri", IMAGE, "--name", "canon",
                 "--hp", "batch-size=64", "--hp=--lr_schedule=step"],
                client_factory=stubs) == 0
    sm.add_response("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": ARN}, {
        "HyperParameterTuningJobName": "canon-t",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Minimize",
                                                 "MetricName": "average test loss"},
            "ResourceLimits": {"MaxParallelTrainingJobs": 2, "MaxNumberOfTrainingJobs": 4},
            "ParameterRanges": {"ContinuousParameterRanges": [
                {"Name": "weight-decay", "MinValue": "1e-05", "MaxValue": "0.001",
                 "ScalingType": "Logarithmic"}]},
            "TrainingJobEarlyStoppingType": "Auto"},
        "TrainingJobDefinition": {"AlgorithmSpecification": ALGO, "RoleArn": ROLE,
                                  "InputDataConfig": ANY, "OutputDataConfig": ANY,
                                  "ResourceConfig": ANY, "StoppingCondition": ANY,
                                  "StaticHyperParameters": {"batch-size": "32"}}})
    assert main(["tune", *base_args(), "--image-uri", IMAGE, "--name", "canon-t",
                 "--hp", "weight-decay=0.0001"], client_factory=stubs) == 0


# -- errors: one line, what to do, non-zero ----------------------------------------------------------
@pytest.mark.parametrize("code, message, rc, words", [
    ("AccessDeniedException", "User: arn:aws:iam::1:user/x is not authorized to perform: "
                              "sagemaker:CreateTrainingJob", 3, "operator policy"),
    ("ResourceLimitExceeded", "The account-level service limit 'ml.g4dn.xlarge for training job "
                              "usage' is 0 Instances", 1, "quota increase"),
    ("ValidationException", "Could not assume role arn:aws:iam::1:role/x. Please ensure that the "
                            "role exists", 1, "execution role"),
    ("ValidationException", "The specified S3 bucket test-bucket does not exist.", 1, "aws s3 mb"),
    ("ValidationException", "1 validation error detected: Value 'ml.bad' at "
                            "'resourceConfig.instanceType' failed", 2, "fix the value"),
])
def test_aws_errors_become_one_line(stubs, capsys, code, message, rc, words):
    stubs["sagemaker"].add_client_error("create_training_job", code, message, 400)
    got = main(["train", *base_args(), "--image-uri", IMAGE, "--no-debugger"], client_factory=stubs)
    assert got == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smctl: error: CreateTrainingJob failed: " + code)
    assert words in err[0]


def test_missing_bucket_is_explained(stubs, aws_env, capsys):
    (aws_env / "ds" / "train" / "a").mkdir(parents=True)
    (aws_env / "ds" / "train" / "a" / "x.jpg").write_bytes(tiny_jpeg())
    stubs["s3"].add_client_error("head_bucket", "404", "Not Found", 404,
                                 expected_params={"Bucket": "nope"})
    rc = main(["data", "upload", "ds", "--region", REGION, "--bucket", "nope"], client_factory=stubs)
    assert rc == 1
    assert "aws s3 mb" in capsys.readouterr().err


def test_no_credentials_and_no_region(aws_env, monkeypatch, capsys):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k)
    assert main(["status", "j1", "--region", REGION]) == 3
    assert "no AWS credentials found - run 'aws configure'" in capsys.readouterr().err
    assert main(["status", "j1"]) == 3
    assert "no AWS region set - pass --region" in capsys.readouterr().err
    monkeypatch.setenv("AWS_REGION", REGION)  # honoured although botocore itself ignores it
    assert main(["status", "j1"]) == 3
    assert "no AWS credentials found" in capsys.readouterr().err


def test_missing_role_names_flag_env_and_key(aws_env, capsys):
    rc = main(["train", "--region", REGION, "--bucket", BUCKET, "--image-uri", IMAGE, "--dry-run"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "role_arn is not set" in err and "--role-arn" in err and "SMCTL_ROLE_ARN" in err


def test_settings_precedence_flag_env_file(aws_env, monkeypatch, capsys):
    (aws_env / "smctl.toml").write_text('bucket = "from-file"\nprefix = "p-file"\n'
                                        'serve_instance_type = "ml.c5.xlarge"\n')
    monkeypatch.setenv("SMCTL_PREFIX", "p-env")
    monkeypatch.setenv("SMCTL_BUCKET", "from-env")
    assert main(["config", "--bucket", "from-flag"]) == 0
    out = capsys.readouterr().out
    rows = {l.split()[0]: l for l in out.splitlines() if l and not l.startswith("config file")}
    assert "from-flag" in rows["bucket"] and "[flag]" in rows["bucket"]
    assert "p-env" in rows["prefix"] and "[env SMCTL_PREFIX]" in rows["prefix"]
    assert "ml.c5.xlarge" in rows["serve_instance_type"] and "smctl.toml" in rows["serve_instance_type"]
    (aws_env / "smctl.toml").write_text('buckett = "typo"\n')
    assert main(["config"]) == 2
    assert "unknown key(s)" in capsys.readouterr().err


def test_dry_run_data_upload_and_fetch(aws_env, capsys):
    for split in ("train", "valid", "test"):
        (aws_env / "ds" / split / "001.A").mkdir(parents=True)
        (aws_env / "ds" / split / "001.A" / "x.jpg").write_bytes(tiny_jpeg())
    assert main(["data", "upload", "ds", *base_args(), "--dry-run", "--s3", "s3://other/sets/ds"],
                client_factory=_no_clients) == 0
    reqs = json.loads(capsys.readouterr().out)
    assert [r["operation"] for r in reqs] == ["HeadBucket"] + ["PutObject"] * 3
    assert sorted(r["request"]["Key"] for r in reqs[1:]) == [
        f"sets/ds/{s}/001.A/x.jpg" for s in ("test", "train", "valid")]
    assert all(r["request"]["Bucket"] == "other" for r in reqs)
    assert main(["data", "fetch", "--url", "http://127.0.0.1:9/d.zip", "--dest", "dd",
                 "--dry-run"]) == 0
    reqs = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in reqs] == ["download", "extract"]
    assert not (aws_env / "dd").exists()


def test_rule_subset_and_unknown_rule(aws_env, capsys):
    assert main(["train", *base_args(), "--image-uri", IMAGE, "--rules", "overfit,vanishing_gradient",
                 "--no-profiler", "--dry-run", "--debugger"]) == 0
    req = json.loads(capsys.readouterr().out)[0]["request"]
    assert [r["RuleConfigurationName"] for r in req["DebugRuleConfigurations"]] == \
        ["Overfit", "VanishingGradient"]
    assert [c["CollectionName"] for c in req["DebugHookConfig"]["CollectionConfigurations"]] == \
        ["gradients", "losses"]
    assert req["ProfilerConfig"] == {"DisableProfiler": True}
    assert "ProfilerRuleConfigurations" not in req
    assert main(["train", *base_args(), "--image-uri", IMAGE, "--rules", "overfitt", "--dry-run",
                 "--debugger"]) == 2
    assert "unknown Debugger rule(s): overfitt" in capsys.readouterr().err


def test_deploy_serves_with_the_image_that_trained_the_model(stubs, capsys):
    trained = IMAGE.replace(":abc123", ":trained1")
    job = _job("Completed", "Completed")
    job["AlgorithmSpecification"]["TrainingImage"] = trained
    sm = stubs["sagemaker"]
    sm.add_response("describe_training_job", job, {"TrainingJobName": "dogs-2"})
    sm.add_response("describe_endpoint", {"EndpointName": "dogs-ep", "EndpointArn": ARN,
                                          "EndpointStatus": "InService", "CreationTime": T0,
                                          "LastModifiedTime": T0}, {"EndpointName": "dogs-ep"})
    sm.add_response("create_model", {"ModelArn": ARN}, {
        "ModelName": ANY, "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": trained, "ModelDataUrl": ANY}})
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": ARN},
                    {"EndpointConfigName": ANY, "ProductionVariants": ANY})
    sm.add_response("update_endpoint", {"EndpointArn": ARN},
                    {"EndpointName": "dogs-ep", "EndpointConfigName": ANY})
    assert main(["deploy", *base_args(), "--training-job", "dogs-2", "--endpoint", "dogs-ep"],
                client_factory=stubs) == 0


def test_invoke_refuses_payloads_over_the_sagemaker_limit(aws_env, capsys):
    (aws_env / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * (6 * 1024 * 1024))
    rc = main(["invoke", "big.jpg", "--endpoint", "e1", "--region", REGION, "--dry-run"],
              client_factory=_no_clients)
    assert rc == 2 and "6 MB" in capsys.readouterr().err


def test_example_config_loads_and_drives_a_tuning_request(aws_env, capsys):
    assert main(["config", "--example"]) == 0
    (aws_env / "smctl.toml").write_text(capsys.readouterr().out)
    assert main(["tune", "--image-uri", IMAGE, "--dry-run"], client_factory=_no_clients) == 0
    req = json.loads(capsys.readouterr().out)[0]["request"]
    ranges = req["HyperParameterTuningJobConfig"]["ParameterRanges"]
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size",
                                                     "Values": ["128", "256", "512"]}]
    assert ranges["ContinuousParameterRanges"][0]["ScalingType"] == "Logarithmic"
    assert req["TrainingJobDefinition"]["StaticHyperParameters"]["amp"] == "auto"


DEBUGGER_FIELDS = {"DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig",
                   "ProfilerRuleConfigurations"}


def test_debugger_is_opt_in_and_the_debugger_error_hint(stubs, monkeypatch, capsys):
    """A new account's first job asks for nothing of SageMaker Debugger; --debugger (or
    debugger = true / SMCTL_DEBUGGER=true) sends it; --no-debugger still parses and wins."""
    def request(*extra):
        assert main(["train", *base_args(), "--image-uri", IMAGE, "--dry-run", *extra],
                    client_factory=_no_clients) == 0
        return json.loads(capsys.readouterr().out)[0]["request"]
    assert not DEBUGGER_FIELDS & set(request())
    assert not DEBUGGER_FIELDS & set(request("--no-debugger"))
    assert DEBUGGER_FIELDS <= set(request("--debugger"))
    monkeypatch.setenv("SMCTL_DEBUGGER", "true")
    assert DEBUGGER_FIELDS <= set(request())
    assert not DEBUGGER_FIELDS & set(request("--no-debugger"))
    monkeypatch.delenv("SMCTL_DEBUGGER")
    # Debugger-only flags without --debugger: refused, not silently dropped
    assert main(["train", *base_args(), "--image-uri", IMAGE, "--dry-run", "--rules", "overfit"],
                client_factory=_no_clients) == 2
    assert "add --debugger" in capsys.readouterr().err
    # an account that opted in without access: the hint says how to turn it off
    stubs["sagemaker"].add_client_error(
        "create_training_job", "ValidationException",
        "SageMaker Debugger is not available for this account.", 400)
    assert main(["train", *base_args(), "--image-uri", IMAGE, "--debugger"],
                client_factory=stubs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drop --debugger" in err[0] and "SMCTL_DEBUGGER=false" in err[0]


def test_stop_training_and_tuning_jobs(stubs, capsys):
    stubs["sagemaker"].add_response("stop_training_job", {}, {"TrainingJobName": "j1"})
    stubs["sagemaker"].add_response("stop_hyper_parameter_tuning_job", {},
                                    {"HyperParameterTuningJobName": "t1"})
    assert main(["stop", "j1", "--region", REGION], client_factory=stubs) == 0
    assert main(["stop", "t1", "--tuning", "--region", REGION], client_factory=stubs) == 0
    assert "stopping tuning job t1" in capsys.readouterr().out


def test_build_push_skips_a_tag_already_in_ecr_and_refuses_latest_on_immutable(
        stubs, aws_env, monkeypatch, capsys):
    log = aws_env / "docker.log"
    fake = aws_env / "fake-docker"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncat >/dev/null 2>&1 || true\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("DOCKER", str(fake))
    repo = {"repositoryUri": f"123456789012.dkr.ecr.{REGION}.amazonaws.com/dogs",
            "repositoryName": "dogs", "imageTagMutability": "IMMUTABLE",
            "imageScanningConfiguration": {"scanOnPush": True}}
    ecr = stubs["ecr"]
    ecr.add_response("describe_repositories", {"repositories": [repo]},
                     {"repositoryNames": ["dogs"]})
    ecr.add_response("get_authorization_token", {"authorizationData": [{
        "authorizationToken": base64.b64encode(b"AWS:t").decode(),
        "proxyEndpoint": f"https://{repo['repositoryUri'].split('/')[0]}"}]}, {})
    ecr.add_response("describe_images", {"imageDetails": [{"imageTags": ["abc"]}]},
                     {"repositoryName": "dogs", "imageIds": [{"imageTag": "abc"}]})
    assert main(["build-push", "--region", REGION, "--image", "imgclf:dev", "--repository", "dogs",
                 "--tag", "abc"], client_factory=stubs) == 0
    cap = capsys.readouterr()
    assert cap.out.strip() == f"{repo['repositoryUri']}:abc"
    assert "already in ECR" in cap.err
    assert not [l for l in log.read_text().splitlines() if l.startswith(("tag ", "push "))]
    ecr.add_response("describe_repositories", {"repositories": [repo]},
                     {"repositoryNames": ["dogs"]})
    assert main(["build-push", "--region", REGION, "--image", "imgclf:dev", "--repository", "dogs",
                 "--tag", "abc", "--latest"], client_factory=stubs) == 1
    assert "immutable tags" in capsys.readouterr().err


def test_every_command_has_help_and_dry_run():
    import argparse
    from smctl.cli import build_parser

    def leaves(parser, path=()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
            return
        for name, sub in subs[0].choices.items():
            yield from leaves(sub, (*path, name))

    found = dict(leaves(build_parser()))
    assert {p[0] for p in found} >= {"config", "build-push", "data", "tune", "best", "train",
                                     "status", "logs", "stop", "deploy", "invoke", "cleanup"}
    assert {p[1] for p in found if p[0] == "data"} == {"fetch", "verify", "upload"}
    for path, parser in found.items():
        options = {o for a in parser._actions for o in a.option_strings}
        assert "--dry-run" in options and "--help" in options, path
        assert parser.format_help()


@pytest.mark.parametrize("creates", [True, False])
def test_ctrl_c_names_what_smctl_created_on_aws_and_only_that(stubs, monkeypatch, capsys, creates):
    from smctl import cleanup

    def interrupted(args, settings, api):
        if creates:
            stubs["sagemaker"].add_response("create_model", {"ModelArn": f"arn:aws:sagemaker:{REGION}:"
                                                             "123456789012:model/m"})
            api.call("sagemaker", "create_model", ModelName="m", ExecutionRoleArn=ROLE,
                     PrimaryContainer={"Image": IMAGE})
        raise KeyboardInterrupt
    monkeypatch.setattr(cleanup, "run_cleanup", interrupted)
    assert main(["cleanup", *base_args(), "--endpoint", "e", "--yes"], client_factory=stubs) == 130
    err = capsys.readouterr().err.strip()
    assert err == ("smctl: interrupted; what it created on AWS (CreateModel) is still there"
                   if creates else "smctl: interrupted")
