"""A small CORE bundle the tests write themselves, laid out as nanochat's eval_bundle/: rows of
its own under the names of three of CORE's tasks, one of each type, and a fourth whose file is
absent; its core.yaml lists 4 of CORE's 22 tasks.

    from core_bundle import write_bundle
"""

import json
from pathlib import Path

CORE_YAML = """icl_tasks:
-
  label: arc_easy
  dataset_uri: world_knowledge/capitals.jsonl
  num_fewshot: [1]
  icl_task_type: multiple_choice
  continuation_delimiter: "\\nAnswer: "
-
  label: winograd
  dataset_uri: language_understanding/pronouns.jsonl
  num_fewshot: [0]
  icl_task_type: schema
-
  label: squad
  dataset_uri: reading_comprehension/absent.jsonl
  num_fewshot: [0]
  icl_task_type: language_modeling
-
  label: lambada_openai
  dataset_uri: language_understanding/words.jsonl
  num_fewshot: [1]
  icl_task_type: language_modeling
"""
META = ("Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline,Centered Metric?,Description\n"
        "arc_easy,world knowledge,multiple choice,1,5,50,,Capitals\n"
        "winograd,language understanding,schema,0,3,50,,Pronouns\n"
        "squad,reading comprehension,language modeling,0,0,0,,Absent\n"
        "lambada_openai,language understanding,language modeling,1,4,0,,\"Words, said again\"\n")
CAPITALS = [
    {"query": "Question: What is the capital of France?", "choices": ["Paris", "Rome"], "gold": 0},
    {"query": "Question: What is the capital of Italy?", "choices": ["Paris", "Rome"], "gold": 1},
    {"query": "Question: What is the capital of Spain?", "choices": ["Madrid", "Lisbon", "Rome"], "gold": 0},
    {"query": "Question: What is the capital of Japan?", "choices": ["Kyoto", "Tokyo"], "gold": 1},
    {"query": "Question: What is the capital of Peru?", "choices": ["Lima", "Quito"], "gold": 0},
]
PRONOUNS = [
    {"context_options": ["The cat chased the dog because the cat", "The cat chased the dog because the dog"],
     "continuation": "was hungry.", "gold": 0},
    {"context_options": ["The cup fell off the table because the cup", "The cup fell off the table because the table"],
     "continuation": "was tilted.", "gold": 1},
    {"context_options": ["Anna thanked Maria because Anna", "Anna thanked Maria because Maria"],
     "continuation": "had helped her.", "gold": 1},
]
WORDS = [
    {"context": "Say hello: ", "continuation": "hello"},
    {"context": "Say the sky is blue:", "continuation": "the sky is blue"},
    {"context": "Say yes: ", "continuation": "yes"},
    {"context": "Say good night:", "continuation": "good night"},
]
GPT2_CSV = ("Task                               , Accuracy  , Centered  \n"
            "arc_easy                           , 0.600000  , 0.200000  \n"
            "winograd                           , 0.700000  , 0.400000  \n"
            "squad                              , 0.100000  , 0.100000  \n"
            "lambada_openai                     , 0.300000  , 0.300000  \n"
            "CORE                               ,           , 0.250000  \n")

# the labels load_tasks names absent: core.yaml's task without a file, then those it does not list
ABSENT = ["squad", "hellaswag_zeroshot", "jeopardy", "bigbench_qa_wikidata", "arc_challenge", "copa", "commonsense_qa",
          "piqa", "openbook_qa", "hellaswag", "winogrande", "bigbench_dyck_languages", "agi_eval_lsat_ar",
          "bigbench_cs_algorithms", "bigbench_operators", "bigbench_repeat_copy_logic", "coqa", "boolq",
          "bigbench_language_identification"]


def write_bundle(d):
    """The test's own bundle, laid out as nanochat's eval_bundle/."""
    d = Path(d)
    files = {"core.yaml": CORE_YAML, "eval_meta_data.csv": META, "openai-community-gpt2.csv": GPT2_CSV}
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    for rel, rows in (("world_knowledge/capitals.jsonl", CAPITALS), ("language_understanding/pronouns.jsonl", PRONOUNS),
                      ("language_understanding/words.jsonl", WORDS)):
        path = d / "eval_data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d
