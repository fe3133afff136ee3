"""MLflow "models from code" entry point (no pickling): MLflow executes this file on load.

Setting the model here is the documented MLflow contract for this one file; nothing else in the
package has import-time effects.
"""
import mlflow

from components.registry.serving import CraftModel

mlflow.models.set_model(CraftModel())
