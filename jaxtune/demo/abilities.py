"""A generated, learnable stand-in for the DoIT dataset: ten abilities in the study's layout and record schema.

The quickstart and the tests must run without the real dataset (about 100 MB on the Hugging Face hub), so this
module writes a small corpus of the same shape: ``curated/1000``, ``curated/full``, ``curated/valid``,
``curated/test`` and ``synthetic/40960`` JSON Lines files, records with ``messages``, ``type``,
``question_format``, ``choices``, ``answer`` and ``idx``. Each ability is a rule a tiny model can pick up from a
few hundred examples (facts looked up in small tables, arithmetic, orderings), so its score grows with data volume
the way the study's curves do; the "synthetic" file holds generic instructions unrelated to the abilities, so it
helps far less. Everything is derived from a seed: the same call writes the same bytes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from jaxtune.data.mixtures import STUDY_ABILITIES
from jaxtune.demo.records import doit_record, write_jsonl

LETTERS = "ABCD"

ANIMALS = {
    "哺乳动物": ["老虎", "海豚", "蝙蝠", "大象", "鲸鱼", "熊猫", "狮子", "兔子"],
    "鸟类": ["企鹅", "麻雀", "老鹰", "鸵鸟", "孔雀", "燕子", "天鹅", "鹦鹉"],
    "鱼类": ["鲨鱼", "金鱼", "鲤鱼", "带鱼", "三文鱼", "鳗鱼", "草鱼", "鲫鱼"],
    "昆虫": ["蜜蜂", "蝴蝶", "蚂蚁", "蜻蜓", "蚊子", "蟋蟀", "甲虫", "苍蝇"],
}
"""Animal class -> eight of its animals: the facts of the biology ability (and of the OOD suite's zoology subject)."""
DYNASTIES = ["夏朝", "商朝", "周朝", "秦朝", "汉朝", "晋朝", "隋朝", "唐朝", "宋朝", "元朝", "明朝", "清朝"]
"""Chinese dynasties in historical order: the facts of the history ability (and of the OOD suite's chronology)."""
_IDIOMS = [
    ("画蛇添", "足"),
    ("守株待", "兔"),
    ("亡羊补", "牢"),
    ("对牛弹", "琴"),
    ("井底之", "蛙"),
    ("掩耳盗", "铃"),
    ("杯弓蛇", "影"),
    ("狐假虎", "威"),
    ("刻舟求", "剑"),
    ("叶公好", "龙"),
    ("自相矛", "盾"),
    ("望梅止", "渴"),
    ("卧薪尝", "胆"),
    ("破釜沉", "舟"),
    ("纸上谈", "兵"),
    ("胸有成", "竹"),
    ("一鸣惊", "人"),
    ("画龙点", "睛"),
]
_PEOPLE = ["小明", "小红", "小刚", "小丽", "小华", "小芳"]
_ETHICS_GOOD = [
    "按时归还借来的书",
    "捡到钱包交给警察",
    "主动帮助迷路的老人",
    "如实报告自己的错误",
    "排队时遵守秩序",
    "保护公共设施",
    "尊重他人的隐私",
    "节约用水用电",
]
_ETHICS_BAD = [
    "考试时偷看别人的答案",
    "随地乱扔垃圾",
    "在背后散布谣言",
    "插队抢占座位",
    "损坏公共财物",
    "撒谎欺骗朋友",
    "抄袭别人的作业",
    "浪费粮食",
]
_CODE_TASKS = [
    (
        "返回两个数的和",
        "def f(a, b):\n    return a + b",
        ["def f(a, b):\n    return a - b", "def f(a, b):\n    return a * b"],
    ),
    (
        "返回列表的长度",
        "def f(xs):\n    return len(xs)",
        ["def f(xs):\n    return xs[0]", "def f(xs):\n    return sum(xs)"],
    ),
    (
        "返回字符串的反转",
        "def f(s):\n    return s[::-1]",
        ["def f(s):\n    return s.upper()", "def f(s):\n    return s + s"],
    ),
    (
        "返回列表中的最大值",
        "def f(xs):\n    return max(xs)",
        ["def f(xs):\n    return min(xs)", "def f(xs):\n    return xs[-1]"],
    ),
    (
        "判断一个数是否为偶数",
        "def f(n):\n    return n % 2 == 0",
        ["def f(n):\n    return n % 2 == 1", "def f(n):\n    return n > 0"],
    ),
    ("返回一个数的平方", "def f(n):\n    return n * n", ["def f(n):\n    return n + n", "def f(n):\n    return n - 1"]),
]
_TOPICS = ["春天", "大海", "月亮", "故乡", "秋天", "星空", "雨夜", "山林"]
_STYLES = {
    "诗歌": "{t}啊{t}，你是我心中永恒的歌。",
    "散文": "{t}静静地来了，带着温柔的气息，走进每个人的心里。",
    "童话": "从前，{t}里住着一只会说话的小狐狸，它每天都在寻找快乐。",
}
_ROLES = {
    "医生": "请按时吃药，多喝水，注意休息。",
    "老师": "同学们，今天我们来复习上节课的内容。",
    "厨师": "这道菜要先用大火炒，再用小火慢炖。",
    "导游": "各位游客，前方就是著名的古城墙。",
    "警察": "您好，请出示您的身份证件。",
}
_SYNTHETIC_TOPICS = ["旅行", "健康", "学习", "工作", "美食", "运动", "音乐", "电影", "科技", "天气"]


def _shuffled_options(rng: random.Random, correct: str, distractors: list[str], n: int = 4) -> tuple[list[str], str]:
    options = [correct] + rng.sample(distractors, n - 1)
    rng.shuffle(options)
    return options, LETTERS[options.index(correct)]


def _format_options(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def _biology(rng: random.Random) -> dict:
    category = rng.choice(list(ANIMALS))
    correct = rng.choice(ANIMALS[category])
    others = [a for c, members in ANIMALS.items() if c != category for a in members]
    options, letter = _shuffled_options(rng, correct, others)
    return doit_record("biology", f"下列哪种动物属于{category}？\n{_format_options(options)}", letter)


def _chinese(rng: random.Random) -> dict:
    head, tail = rng.choice(_IDIOMS)
    return doit_record("chinese", f"请补全成语：{head}__", tail)


def _code(rng: random.Random) -> dict:
    task, good, bad = rng.choice(_CODE_TASKS)
    return doit_record("code", f"用Python写一个函数f，{task}。", good, fmt=1, choices=[good, *bad])


def _creative_writing(rng: random.Random) -> dict:
    topic = rng.choice(_TOPICS)
    style = rng.choice(list(_STYLES))
    good = _STYLES[style].format(t=topic)
    bad = [_STYLES[s].format(t=t) for s in _STYLES for t in _TOPICS if (s, t) != (style, topic)]
    return doit_record(
        "creative_writing", f"以“{topic}”为题写一段{style}。", good, fmt=1, choices=[good, *rng.sample(bad, 2)]
    )


def _ethics(rng: random.Random) -> dict:
    n_good = rng.choice([1, 2])
    picks = rng.sample(_ETHICS_GOOD, n_good) + rng.sample(_ETHICS_BAD, 4 - n_good)
    rng.shuffle(picks)
    labels = "".join(f"({LETTERS[i]})" for i, p in enumerate(picks) if p in _ETHICS_GOOD)
    options = " ".join(f"({LETTERS[i]}){p}" for i, p in enumerate(picks))
    return doit_record("ethics", f"以下哪些行为是符合道德的？{options}", f"符合道德的行为是：\n{labels}")


def _history(rng: random.Random) -> dict:
    a, b = rng.sample(range(len(DYNASTIES)), 2)
    truth = a < b
    return doit_record("history", f"判断正误：{DYNASTIES[a]}在{DYNASTIES[b]}之前。", "正确" if truth else "错误")


def _math(rng: random.Random) -> dict:
    x, y = rng.randint(1, 20), rng.randint(1, 20)
    op = rng.choice("+-")
    value = x + y if op == "+" else x - y
    return doit_record("math", f"计算：{x}{op}{y}=？", f"{x}{op}{y}={value}。答案：{value}", answer=str(value))


def _reasoning(rng: random.Random) -> dict:
    a, b, c = rng.sample(_PEOPLE, 3)
    options, letter = _shuffled_options(rng, a, [b, c, "无法确定"])
    return doit_record("reasoning", f"{a}比{b}高，{b}比{c}高。谁最高？\n{_format_options(options)}", letter)


def _role_play(rng: random.Random) -> dict:
    role = rng.choice(list(_ROLES))
    good = _ROLES[role]
    bad = rng.sample([r for k, r in _ROLES.items() if k != role], 2)
    return doit_record(
        "role_play",
        f"请你扮演一位{role}，说一句符合身份的话。",
        good,
        fmt=1,
        choices=[good, *bad],
        history=[("你好。", "你好！有什么可以帮你的吗？")],
    )


def _understanding(rng: random.Random) -> dict:
    speaker, listener = rng.sample(_PEOPLE, 2)
    feeling, cause = rng.choice([("开心", "考试得了满分"), ("难过", "丢了心爱的小狗"), ("生气", "被人冤枉了")])
    dialogue = f"{speaker}：我今天{cause}。\n{listener}：那你现在感觉怎么样？"
    options = ["开心", "难过", "生气"]
    rng.shuffle(options)
    question = f"阅读对话，{speaker}最可能的心情是？\n{dialogue}\n" + "\n".join(
        f"{LETTERS[i]}. {o}" for i, o in enumerate(options)
    )
    return doit_record("understanding", question, LETTERS[options.index(feeling)])


GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "biology": _biology,
    "chinese": _chinese,
    "code": _code,
    "creative_writing": _creative_writing,
    "ethics": _ethics,
    "history": _history,
    "math": _math,
    "reasoning": _reasoning,
    "role_play": _role_play,
    "understanding": _understanding,
}


def _synthetic(rng: random.Random) -> dict:
    topic = rng.choice(_SYNTHETIC_TOPICS)
    n = rng.randint(2, 5)
    reply = f"关于{topic}，这里有{n}条建议：" + "；".join(f"第{i + 1}，保持好习惯" for i in range(n)) + "。"
    return {
        "messages": [
            {"role": "user", "content": f"请给我一些关于{topic}的建议。"},
            {"role": "assistant", "content": reply},
        ]
    }


def write_demo_dataset(
    out_dir: str | Path, *, per_ability: int = 1000, eval_per_ability: int = 40, synthetic: int = 2000, seed: int = 0
) -> Path:
    """Write the generated corpus in the DoIT layout under ``out_dir`` and return that directory.

    per_ability: training records per ability (``curated/1000`` and ``curated/full``); eval_per_ability: records
    per ability in ``curated/valid`` and ``curated/test``; synthetic: records in the synthetic file.
    """
    out = Path(out_dir)
    rng = random.Random(seed)
    for ability in STUDY_ABILITIES:
        make = GENERATORS[ability]
        train = [make(rng) for _ in range(per_ability)]
        valid = [make(rng) for _ in range(eval_per_ability)]
        test = [make(rng) for _ in range(eval_per_ability)]
        for i, r in enumerate(train):
            r["idx"] = i
        for split, records in (("valid", valid), ("test", test)):
            for i, r in enumerate(records):
                r["idx"] = i
            write_jsonl(out / "curated" / split / f"{ability}_{split}.json", records)
        write_jsonl(out / "curated" / "1000" / f"{ability}_1000.json", train)
        write_jsonl(out / "curated" / "full" / f"{ability}_full.json", train)
    synthetic_records = [_synthetic(rng) for _ in range(synthetic)]
    for i, r in enumerate(synthetic_records):
        r["idx"] = i
    write_jsonl(out / "synthetic" / "40960" / "general_instruction_gpt4_41k.json", synthetic_records)
    return out


def demo_corpus_text(seed: int = 0, per_ability: int = 300) -> list[str]:
    """Every message text of a demo corpus (what the bundled demo tokenizer was trained on)."""
    rng = random.Random(seed)
    texts: list[str] = []
    for ability in STUDY_ABILITIES:
        for _ in range(per_ability):
            r = GENERATORS[ability](rng)
            texts += [m["content"] for m in r["messages"]] + list(r["choices"])
    for _ in range(per_ability):
        texts += [m["content"] for m in _synthetic(rng)["messages"]]
    return texts
