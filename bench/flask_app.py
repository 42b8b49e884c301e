"""The classic "Flask + pickle" model server, as tutorials write it (the baseline of proxy_bench).

Run by bench/proxy_bench.py in a throwaway virtual environment that has flask and the
model's scikit-learn; never imported by the portal:

    python bench/flask_app.py MODEL.pkl PORT

POST /predict {"features": [1500, 3, 2]} -> {"prediction": 558408.11...}
"""

import pickle
import sys

import numpy as np
from flask import Flask, jsonify, request

app = Flask(__name__)

with open(sys.argv[1], "rb") as f:
    model = pickle.load(f)  # noqa: S301 - the tutorial pattern being measured; a trusted fixture


@app.route("/predict", methods=["POST"])
def predict():
    data = request.get_json()
    features = np.array(data["features"]).reshape(1, -1)
    prediction = model.predict(features)
    return jsonify({"prediction": float(prediction[0])})


if __name__ == "__main__":
    # The development server, threaded (Flask's default since 1.0), as the tutorials run it.
    app.run(host="127.0.0.1", port=int(sys.argv[2]), threaded=True)
