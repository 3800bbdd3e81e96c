"""A compiled FHIRPath subset: the expressions SQL on FHIR v2 views use.

Expressions are parsed once into a small tree and compiled into nested Python closures, so evaluating a
view over many resources costs one closure call per node, not one interpretation of the text per resource.
"""

from airflow_provider_smart.views.fhirpath.compiler import Compiled, Env, compile_expression

__all__ = ["Compiled", "Env", "compile_expression"]
