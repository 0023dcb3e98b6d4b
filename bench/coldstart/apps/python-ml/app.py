# python-ml: Flask + numpy, pandas, scipy, scikit-learn. At startup it trains a logistic
# regression on the iris data set that scikit-learn ships; GET /predict?x=5.1,3.5,1.4,0.2
# answers the predicted species and the z-scores (scipy) of the input against the training data.
import os

import numpy as np
import pandas as pd
from flask import Flask, jsonify, request
from scipy import stats
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

iris = load_iris(as_frame=True)
frame: pd.DataFrame = iris.frame
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
model.fit(frame[iris.feature_names].to_numpy(), iris.target.to_numpy())
app = Flask(__name__)


@app.get("/predict")
def predict():
    x = np.array([[float(v) for v in request.args.get("x", "5.1,3.5,1.4,0.2").split(",")]])
    cls = int(model.predict(x)[0])
    data = frame[iris.feature_names].to_numpy()
    z = (x[0] - data.mean(axis=0)) / data.std(axis=0)
    pct = [float(stats.percentileofscore(data[:, i], x[0, i])) for i in range(4)]
    return jsonify(species=str(iris.target_names[cls]), proba=model.predict_proba(x)[0].round(4).tolist(),
                   zscore=z.round(3).tolist(), percentile=pct)


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=int(os.environ.get("FC_SERVER_PORT", "9000")))
