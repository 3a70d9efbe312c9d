"""ffdl validate: manifests, Lua specs, the schema, the team policies."""
import json
import pathlib

import pytest

from conftest import ROOT, diagnostics

BAD = ROOT / "tests" / "data" / "bad"
EXAMPLES = sorted(p for p in (ROOT / "manifests").iterdir()
                  if p.suffix in (".yml", ".yaml", ".json", ".lua"))
BAD_FILES = sorted(p for p in BAD.iterdir() if p.suffix != ".expected")
# warnings: each file with an .expected holds all its lines ({file}: its name)
WARNED_FILES = sorted(p for p in (ROOT / "tests" / "data" / "warn").iterdir()
                      if pathlib.Path(str(p) + ".expected").exists())

GOOD = """name: t
framework:
  name: pytorch
  version: "2.1.0"
  command: python3 train.py
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_bad_corpus_is_large_enough():
    assert len(BAD_FILES) >= 25


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_manifests_are_valid(ffdl, path):
    result = ffdl("validate", path.relative_to(ROOT))
    assert result.returncode == 0, result.stderr
    assert diagnostics(result.stderr, str(path.relative_to(ROOT))) == []


def test_every_framework_ffdl_ran_has_an_example(ffdl):
    result = ffdl("validate", "--print", *[p.relative_to(ROOT) for p in EXAMPLES])
    assert result.returncode == 0, result.stderr
    specs = [json.loads(chunk) for chunk in split_json_objects(result.stdout)]
    names = {spec["framework"]["name"] for spec in specs}
    assert {"tensorflow", "pytorch", "caffe", "caffe2", "horovod", "h2o3", "pytorchmpi",
            "custom"} <= names


def split_json_objects(text):
    """--print writes one pretty JSON object per file, one after another."""
    decoder, pos, out = json.JSONDecoder(), 0, []
    text = text.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        out.append(json.dumps(obj))
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


@pytest.mark.parametrize("path, status", [(p, 2) for p in BAD_FILES] +
                         [(p, 0) for p in WARNED_FILES], ids=lambda v: getattr(v, "name", f"exit{v}"))
def test_each_file_gets_its_exact_messages(ffdl, path, status):
    """Bad input exits 2; a file with warnings only is valid (0), and each
    of its lines says warning."""
    name = str(path.relative_to(ROOT))
    result = ffdl("validate", name, timeout=30)
    assert result.returncode == status, result.stderr
    expected = pathlib.Path(str(path) + ".expected").read_text().splitlines()
    expected = [line.replace("{file}", name) for line in expected]
    assert expected, "an expectation file must not be empty"
    assert status or all(": warning: " in line for line in expected), expected
    assert diagnostics(result.stderr, name) == expected


def test_every_problem_is_reported_at_once(ffdl, tmp_path):
    path = write(tmp_path, "many.yml", "name: t\nlearners: two\ncpus: -1\nmemory: 3XB\n"
                 "framework:\n  name: pytorch\n")
    result = ffdl("validate", path)
    lines = diagnostics(result.stderr, str(path))
    assert result.returncode == 2
    # framework.version is not missing: frameworks.lua gives pytorch a default
    assert [line.split(": ")[1] for line in lines] == [
        "learners", "cpus", "memory", "framework.command"]


def test_valid_and_invalid_files_together_exit_2(ffdl, tmp_path):
    good = write(tmp_path, "good.yml", GOOD)
    bad = write(tmp_path, "bad.yml", "name: t\n")
    result = ffdl("validate", good, bad)
    assert result.returncode == 2
    assert diagnostics(result.stderr, str(good)) == []
    assert diagnostics(result.stderr, str(bad)) == [f"{bad}:1:1: framework: is required"]


NOT_UPLOADED = (
    "the job's results will not be uploaded to S3; they stay in the local results directory "
    "($FFDL_RESULTS/<training-id>/, ./ffdl-results/ by default, with ffdl-run; under the "
    "server's --data, fetched with ffdl download ID --trainedmodel), and a server's default S3 "
    "store takes only manifests that name no data store. Set training_results.container to the "
    "results bucket to upload them")


def test_s3_store_without_training_results_is_a_warning_saying_where_results_stay(ffdl):
    name = "tests/data/warn/s3-no-results.yml"
    result = ffdl("validate", name)
    assert result.returncode == 0
    assert diagnostics(result.stderr, name) == [
        f"{name}:3:5: warning: data_stores[0].training_results: is not set: {NOT_UPLOADED}"]


def test_misspelt_training_results_is_named_at_its_line(ffdl):
    """training_result: the unknown-field warning, and the one that says
    what it costs, both at the misspelt key."""
    name = "tests/data/warn/s3-results-typo.yml"
    result = ffdl("validate", name)
    assert result.returncode == 0
    assert diagnostics(result.stderr, name) == [
        f"{name}:7:5: warning: data_stores[0].training_result: unknown field, ignored",
        f'{name}:7:5: warning: data_stores[0].training_results: is not set ("training_result" '
        f"is not a field: did you mean training_results?): {NOT_UPLOADED}"]


def print_spec(ffdl, path, *extra):
    result = ffdl("validate", "--print", *extra, path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("text,expected", [
    ("1Gb", 10**9), ("1000MiB", 1000 * 2**20), ("16GB", 16 * 10**9), ("2GiB", 2 * 2**30),
    ("512mb", 512 * 10**6), ("1TiB", 2**40), ("16Gi", 16 * 2**30), ("512Mi", 512 * 2**20)])
def test_memory_units(ffdl, tmp_path, text, expected):
    path = write(tmp_path, "m.yml", GOOD + f"memory: {text}\n")
    spec = print_spec(ffdl, path)
    assert spec["resources"]["memory_bytes"] == expected
    assert spec["resources"]["memory"] == text


def test_folded_command_becomes_one_line(ffdl, tmp_path):
    path = write(tmp_path, "f.yml", "name: t\nframework:\n  name: pytorch\n  version: '1'\n"
                 "  command: >\n    python3 train.py\n    --epochs 2\n")
    assert print_spec(ffdl, path)["framework"]["command"] == "python3 train.py --epochs 2"


def test_version_keeps_its_text(ffdl, tmp_path):
    path = write(tmp_path, "v.yml", "name: t\nframework:\n  name: tensorflow\n  version: 1.10\n"
                 "  command: x\n")
    spec = print_spec(ffdl, path)
    assert spec["framework"]["version"] == "1.10"
    assert spec["framework"]["image"] == "tensorflow/tensorflow:1.10"


def test_any_version_maps_to_an_image_tag(ffdl, tmp_path):
    path = write(tmp_path, "v.yml", "name: t\nframework:\n  name: caffe\n  version: gpu-cuda8\n"
                 "  command: caffe train\n")
    assert print_spec(ffdl, path)["framework"]["image"] == "bvlc/caffe:gpu-cuda8"


def test_custom_takes_version_as_the_image(ffdl, tmp_path):
    path = write(tmp_path, "c.yml", "name: t\nframework:\n  name: custom\n"
                 "  version: registry.local/team/trainer:7\n  command: ./run\n")
    assert print_spec(ffdl, path)["framework"]["image"] == "registry.local/team/trainer:7"


def test_gpus_validate_without_a_gpu(ffdl, tmp_path):
    path = write(tmp_path, "g.yml", GOOD + "gpus: 4\nlearners: 2\n")
    spec = print_spec(ffdl, path)
    assert spec["resources"]["gpus"] == 4
    assert "gpu_type" not in spec["resources"]  # any type, unless defaults.lua names one


def test_secrets_are_redacted_in_print(ffdl):
    result = ffdl("validate", "--print", "manifests/tensorflow-mnist.yml")
    assert result.returncode == 0
    assert "test-secret-key" not in result.stdout + result.stderr
    spec = json.loads(result.stdout)
    assert spec["data_stores"][0]["connection"]["password"] == "***"
    assert spec["data_stores"][0]["connection"]["region"] == "us-standard"


def test_defaults_come_from_the_lua_policies(ffdl, tmp_path, policies_copy):
    defaults = policies_copy / "defaults.lua"
    defaults.write_text(defaults.read_text().replace("cpus = 1,", "cpus = 3,")
                        .replace('memory = "1GiB"', 'memory = "3GiB"'))
    path = write(tmp_path, "d.yml", GOOD)
    spec = print_spec(ffdl, path, "--policies", policies_copy)
    assert spec["resources"]["cpus"] == 3
    assert spec["resources"]["memory_bytes"] == 3 * 2**30
    assert spec["learners"] == 1


def test_team_label_rule(ffdl, tmp_path, policies_copy):
    rules = policies_copy / "validate.lua"
    rules.write_text(rules.read_text().replace("require_team_label = false",
                                               "require_team_label = true"))
    bare = write(tmp_path, "bare.yml", GOOD)
    labelled = write(tmp_path, "labelled.yml", GOOD + "labels:\n  team: vision\n")
    result = ffdl("validate", "--policies", policies_copy, bare, labelled)
    assert result.returncode == 2
    assert diagnostics(result.stderr, str(bare)) == [
        f"{bare}:1:1: labels.team: every job needs a team label (labels: {{team: NAME}})"]
    assert diagnostics(result.stderr, str(labelled)) == []


def test_narrowed_framework_versions(ffdl, tmp_path, policies_copy):
    fw = policies_copy / "frameworks.lua"
    fw.write_text(fw.read_text().replace(
        'image = "pytorch/pytorch:%s", versions = "*"',
        'image = "pytorch/pytorch:%s", versions = { "2.1.0" }'))
    old = write(tmp_path, "old.yml", GOOD.replace("2.1.0", "0.4"))
    result = ffdl("validate", "--policies", policies_copy, old)
    assert result.returncode == 2
    assert diagnostics(result.stderr, str(old)) == [
        f"{old}:4:12: framework.version: pytorch 0.4 is not allowed here; allowed: 2.1.0"]


def test_policy_runtime_error_names_file_and_line(ffdl, tmp_path, policies_copy):
    rules = policies_copy / "validate.lua"
    text = rules.read_text().replace("  local errors = {}\n",
                                     "  local errors = {}\n  local boom = spec.nothing.here\n", 1)
    rules.write_text(text)
    line = text.splitlines().index("  local boom = spec.nothing.here") + 1
    path = write(tmp_path, "p.yml", GOOD)
    result = ffdl("validate", "--policies", policies_copy, path)
    assert result.returncode == 2
    [diag] = diagnostics(result.stderr, str(path))
    assert f"validate.lua:{line}: attempt to index a nil value (field 'nothing')" in diag
    assert "validate() failed" in diag
    assert "unspecified" not in result.stderr.lower()
    assert "stack traceback" in result.stderr  # the traceback goes to the log


def test_policy_wrong_return_shape(ffdl, tmp_path, policies_copy):
    rules = policies_copy / "validate.lua"
    rules.write_text(rules.read_text().replace("  if #errors > 0 then return nil, errors end",
                                               "  do return 42 end"))
    path = write(tmp_path, "p.yml", GOOD)
    result = ffdl("validate", "--policies", policies_copy, path)
    assert result.returncode == 2
    assert diagnostics(result.stderr, str(path)) == [
        f"{path}:1:1: (policy): validate() must return true, or nil and a list of "
        "{path=, message=}; got 42"]


def test_policy_infinite_loop_is_stopped(ffdl, tmp_path, policies_copy):
    rules = policies_copy / "validate.lua"
    rules.write_text(rules.read_text().replace("  local errors = {}\n",
                                               "  local errors = {}\n  while true do end\n", 1))
    path = write(tmp_path, "p.yml", GOOD)
    result = ffdl("validate", "--policies", policies_copy, path, timeout=30)
    assert result.returncode == 2
    [diag] = diagnostics(result.stderr, str(path))
    assert "deadline of 1000 ms exceeded" in diag and "validate.lua:" in diag


def test_policy_using_os_is_refused(ffdl, tmp_path, policies_copy):
    rules = policies_copy / "validate.lua"
    rules.write_text(rules.read_text().replace("  local errors = {}\n",
                                               "  local errors = {}\n  os.remove('x')\n", 1))
    path = write(tmp_path, "p.yml", GOOD)
    result = ffdl("validate", "--policies", policies_copy, path)
    assert result.returncode == 2
    assert "attempt to index a nil value (global 'os')" in result.stderr


def test_policy_syntax_error_is_reported(ffdl, tmp_path, policies_copy):
    (policies_copy / "validate.lua").write_text("return {\n  validate = function(\n}\n")
    result = ffdl("validate", "--policies", policies_copy, write(tmp_path, "p.yml", GOOD))
    assert result.returncode == 2
    assert "validate.lua:3:" in result.stderr
    assert "cannot load the policies" in result.stderr


def test_missing_policy_file(ffdl, tmp_path, policies_copy):
    (policies_copy / "frameworks.lua").unlink()
    result = ffdl("validate", "--policies", policies_copy, write(tmp_path, "p.yml", GOOD))
    assert result.returncode == 2
    assert "frameworks.lua: required policy file is missing" in result.stderr


def test_lua_spec_errors_point_at_their_line(ffdl, tmp_path):
    path = write(tmp_path, "s.lua", 'return {\n  name = "t",\n  cpus = 0,\n'
                 '  framework = {\n    name = "pytorch",\n    version = "2",\n  },\n}\n')
    result = ffdl("validate", path)
    assert result.returncode == 2
    assert diagnostics(result.stderr, str(path)) == [
        f"{path}:3:10: cpus: must be a number > 0, got 0 (FfDL read 0 as its default; "
        "ffdl asks for the number you mean)",
        f"{path}:4:3: framework.command: is required"]


def test_missing_file(ffdl, tmp_path):
    result = ffdl("validate", tmp_path / "nope.yml")
    assert result.returncode == 2
    assert "cannot read the file: no such file or directory" in result.stderr


def test_no_files_is_a_usage_error(ffdl):
    result = ffdl("validate")
    assert result.returncode == 2
    assert "no files given" in result.stderr


def test_info_reports_cpus_memory_and_gpus(ffdl):
    result = ffdl("info")
    assert result.returncode == 0
    assert "cpus:" in result.stdout and "memory:" in result.stdout
    gpu_line = [line for line in result.stdout.splitlines() if line.startswith("gpus:")][0]
    if "no GPU" in gpu_line:
        reason = gpu_line.split("no GPU:", 1)[1].strip()
        assert reason, "no GPU must come with a reason"
    else:
        assert "GPU-" in result.stdout  # each GPU is listed with its UUID


def test_real_ffdl_manifests_validate_unchanged(ffdl):
    """FfDL's own example manifests, kept outside the repo (they are FfDL's
    text): point FFDL_REAL_MANIFESTS at a directory of them."""
    import os
    directory = os.environ.get("FFDL_REAL_MANIFESTS")
    if not directory:
        pytest.skip("FFDL_REAL_MANIFESTS is not set: no FfDL manifests to check on this machine")
    files = sorted(pathlib.Path(directory).glob("*.y*ml"))
    assert files, f"no manifests in {directory}"
    result = ffdl("validate", *files)
    assert result.returncode == 0, result.stderr


def test_more_indented_folded_lines_join_too(ffdl, tmp_path):
    path = write(tmp_path, "f.yml", "name: t\nframework:\n  name: pytorch\n  version: '1'\n"
                 "  command: >\n    python3 train.py\n      --a 1\n      --b 2\n    --c 3\n")
    assert print_spec(ffdl, path)["framework"]["command"] == "python3 train.py --a 1 --b 2 --c 3"


