"""The instance profiles of ray_cluster.yaml and README.md: every node type names one of the two
profiles README.md tells an operator to create, and their policies grant S3 on the output prefix alone.
(The rest of ray_cluster.yaml, its install command included, is checked in test_synth.py.)"""

from __future__ import annotations

import json
import re

import yaml

from conftest import ROOT


def cluster() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def readme_policies() -> tuple[dict, list[dict]]:
    """The writer's policy and the head's extra statements: the two json blocks of the README's
    "Instance profiles for `ray up`" paragraph."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**Instance profiles for `ray up`.**") :]
    blocks = re.findall(r"```json\n(.*?)```", section, re.S)[:2]
    return json.loads(blocks[0]), json.loads(blocks[1])


def test_every_node_type_names_a_profile_so_ray_attaches_no_default_role():
    profiles = {
        name: node["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        for name, node in cluster()["available_node_types"].items()
    }
    assert profiles == {
        "head": "arn:aws:iam::ACCOUNT:instance-profile/dakter-synth-head",
        "gpu": "arn:aws:iam::ACCOUNT:instance-profile/dakter-synth-writer",
    }


def test_the_profiles_grant_s3_on_the_output_prefix_alone():
    writer, head_extra = readme_policies()
    head = writer["Statement"] + head_extra
    for statements in (writer["Statement"], head):
        for st in statements:
            actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
            resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
            assert st["Effect"] == "Allow" and not any(a.endswith("*") for a in actions), st
            if any(a.startswith("s3:") for a in actions):
                assert all(a.startswith("s3:") for a in actions)
                if actions == ["s3:ListBucket"]:
                    assert resources == ["arn:aws:s3:::BUCKET"] and st["Condition"] == {
                        "StringLike": {"s3:prefix": ["PREFIX", "PREFIX/*"]}
                    }
                else:
                    assert resources == ["arn:aws:s3:::BUCKET/PREFIX/*"], st
    assert not any(
        a.startswith("ec2:") or a.startswith("iam:")
        for st in writer["Statement"]
        for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    )
    passes = [st for st in head if "iam:PassRole" in st["Action"]]
    assert [st["Resource"] for st in passes] == ["arn:aws:iam::ACCOUNT:role/dakter-synth-writer"]
