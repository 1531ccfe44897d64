"""The ``k8s_schema`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from . import metrics
from .setup import setup
from .stage import SchemaStage

PLUGIN = Plugin("k8s_schema", setup, lambda cfg, b: SchemaStage(cfg, b.clock),
                "answer search-walk names the Kubernetes DNS schema cannot produce, and RFC 8020 denials, at the node",
                metrics=metrics.families, support="differs",
                note="nodecache's own (CoreDNS has autopath, which needs the API server); opt-in per block")
