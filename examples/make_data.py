#!/usr/bin/env python3
"""Generate the demo multi-task data set in examples/data/ (deterministic).

    python examples/make_data.py [--out DIR] [--seed N]

Four tasks, each written as NAME.train.jsonl (400 rows) and NAME.eval.jsonl
(100 rows), about half English and half Japanese:

  sentiment   classification         {"text": ..., "label": "pos" | "neg" | "neutral"}
  topic       multilabel             {"text": ..., "topics": ["food", "travel"]}
  similarity  regression (0.0-5.0)   {"text_a": ..., "text_b": ..., "score": 3.0}
  entities    token_classification   {"tokens": [...], "tags": ["B-PER", "O", ...]}

Every label follows from the words: sentences are built from templates with
slot fillers (sentiment words, topic vocabulary, names/places/organisations),
and the similarity score is the number of event slots (who, did what, to what,
where, when) that the two sentences state alike, averaged over the events they
describe; a slot left vague ("someone", "something") or left out on either side
counts as not shared. Japanese text is written without spaces; Japanese token
rows are split into words/morphemes by hand.

Lengths have a long tail, like real user data: most rows are one short
sentence, about one row in ten is long (several sentences, 40-130 subword
tokens) and about one in forty is very long (140-185 tokens). The summary at
the end estimates subword tokens BERT-style (every CJK character is a token).

Only the standard library is used, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

TRAIN_ROWS = 400
EVAL_ROWS = 100
LONG_SHARE = 0.10  # rows with 45-130 estimated tokens
VERY_LONG_SHARE = 0.025  # rows with 140-185 estimated tokens
TOKEN_CAP = 185  # no row is grown past this many estimated tokens

SENTIMENTS = ["pos", "neg", "neutral"]
TOPICS = ["sports", "tech", "food", "travel", "finance"]
ENTITY_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]

# Japanese templates mark word boundaries with "|": text rows drop them, token rows split on them.
SEP = "|"


# --------------------------------------------------------------------------- helpers


def fill(rng: random.Random, template: str, slots: dict[str, list[str]]) -> str:
    """Replace every {slot} in `template` by a random filler (each occurrence drawn anew)."""
    return re.sub(r"\{(\w+)\}", lambda m: rng.choice(slots[m.group(1)]), template)


def cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def ja_text(marked: str) -> str:
    return marked.replace(SEP, "")


def count_words(text: str, lang: str) -> int:
    """English: whitespace words; Japanese: the hand-split words of the template."""
    if lang == "ja":
        return sum(1 for w in text.split(SEP) if w and not _is_punct(w))
    return len(text.split())


def _is_punct(piece: str) -> bool:
    return all(not ch.isalnum() for ch in piece)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff"


def estimate_tokens(text: str) -> int:
    """Rough BERT WordPiece count: CJK characters and punctuation are one token each,
    a Latin word is one token, a run of kana about one token per three characters."""
    text = text.replace(SEP, "")
    tokens = 0
    run = ""

    def flush() -> int:
        if not run:
            return 0
        if all(ord(c) < 0x3000 for c in run):
            return 1 + len(run) // 12
        return (len(run) + 2) // 3

    for ch in text:
        if ch.isspace():
            tokens += flush()
            run = ""
        elif _is_cjk(ch) or not ch.isalnum() and not ("\u3040" <= ch <= "\u30ff"):
            tokens += flush() + 1
            run = ""
        else:
            run += ch
    return tokens + flush()


def length_class(rng: random.Random) -> tuple[str, int]:
    """('short', 0), or ('long'|'very_long', target estimated tokens)."""
    r = rng.random()
    if r < VERY_LONG_SHARE:
        return "very_long", rng.randint(140, 180)
    if r < VERY_LONG_SHARE + LONG_SHARE:
        return "long", rng.randint(45, 130)
    return "short", 0


def grow(rng: random.Random, first: list[str], more, target: int, joiner: str, estimate) -> list[str]:
    """Append pieces from `more()` to `first` until `estimate` reaches `target` (never past TOKEN_CAP)."""
    pieces = list(first)
    for _ in range(200):
        if estimate(joiner.join(pieces)) >= target:
            break
        candidate = pieces + [more()]
        if estimate(joiner.join(candidate)) > TOKEN_CAP:
            break
        pieces = candidate
    return pieces


def percentiles(values: list[int], qs=(50, 90, 95, 99)) -> str:
    ordered = sorted(values)
    parts = [f"p{q}={ordered[min(len(ordered) - 1, (q * len(ordered)) // 100)]}" for q in qs]
    return " ".join(parts) + f" max={ordered[-1]}"


# --------------------------------------------------------------------------- sentiment

EN_ITEMS = [
    "phone", "laptop", "coffee maker", "vacuum cleaner", "headset", "watch", "umbrella", "backpack",
    "rice cooker", "camera", "novel", "bicycle", "desk lamp", "kettle", "jacket", "keyboard",
]
JA_ITEMS = [
    "スマホ", "ノート|パソコン", "コーヒー|メーカー", "掃除機", "イヤホン", "腕時計", "傘", "リュック",
    "炊飯器", "カメラ", "小説", "自転車", "電気|スタンド", "ケトル", "ジャケット", "キーボード",
]
EN_COMMON = {
    "item": EN_ITEMS,
    "pos": ["great", "wonderful", "excellent", "amazing", "fantastic", "lovely", "superb", "brilliant", "perfect"],
    "neg": ["terrible", "awful", "disappointing", "horrible", "useless", "poor", "dreadful", "flimsy"],
    "love": ["love", "adore", "really like", "enjoy using"],
    "hate": ["hate", "regret buying", "can't stand", "dislike"],
    "praise": ["highly recommended", "five stars", "worth every penny", "I would buy it again"],
    "complaint": ["what a waste of money", "I want a refund", "one star", "never again"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "when": ["last week", "yesterday", "two days ago", "last month", "this morning"],
    "color": ["black", "white", "grey", "blue", "green", "silver"],
    "relative": ["sister", "brother", "mother", "father", "roommate", "cousin"],
    "place": ["my office", "the front desk", "my parents' house", "the post office", "a locker"],
    "n": ["2", "3", "4", "5", "6", "10"],
}
EN_SENTIMENT = {
    "pos": [
        "The {item} is {pos}.",
        "I {love} this {item}.",
        "What a {pos} {item}!",
        "This {item} is {pos}, {praise}.",
        "Honestly, the {item} turned out {pos}.",
        "The new {item} works {pos_adv} and looks {pos}.",
        "My {relative} says the {item} is {pos}, and I agree.",
        "{pos_cap} {item}, {praise}.",
    ],
    "neg": [
        "The {item} is {neg}.",
        "I {hate} this {item}.",
        "What a {neg} {item}!",
        "This {item} is {neg}, {complaint}.",
        "The {item} is not {pos} at all.",
        "The {item} broke after {n} days, {complaint}.",
        "My {relative} says the {item} is {neg}, and I agree.",
        "{neg_cap} {item}, {complaint}.",
    ],
    "neutral": [
        "The {item} arrived on {day}.",
        "I bought the {item} {when}.",
        "The {item} is {color} and weighs about {n}00 grams.",
        "My {relative} uses the {item} every day.",
        "Is the {item} available in {color}?",
        "The {item} was delivered to {place}.",
        "It is an okay {item}, not {pos} but not {neg} either.",
        "The {item} comes with a {color} case and a manual.",
    ],
}
EN_SENTIMENT_SLOTS = dict(
    EN_COMMON,
    pos_adv=["perfectly", "beautifully", "smoothly", "flawlessly"],
    pos_cap=["Great", "Wonderful", "Excellent", "Amazing", "Brilliant"],
    neg_cap=["Terrible", "Awful", "Disappointing", "Useless", "Dreadful"],
)
EN_SENTIMENT_PREFIX = ["", "", "", "Overall, ", "To be honest, ", "After a week, ", "So far, "]
EN_SENTIMENT_SUFFIX = ["", "", "", " I ordered it online.", " It came in a {color} box.", " My {relative} chose it.", " I use it at work."]
EN_SENTIMENT_FILLER = [
    "I ordered it on {day} from an online shop.",
    "The package came in a {color} box.",
    "My {relative} helped me set it up.",
    "The instructions were printed in {n} languages.",
    "I have been using it for {n} weeks now.",
    "It replaced an older {item} that I had for years.",
    "The shop is near the station, so I picked it up on {day}.",
    "Shipping took {n} days.",
    "I usually keep it in my bag.",
    "The battery lasts about {n} hours.",
    "I compared it with a {color} {item} before buying it.",
    "My {relative} has the same model in {color}.",
]
EN_SENTIMENT_ECHO = {
    "pos": ["In the end, I would say it is {pos}.", "All in all, {praise}."],
    "neg": ["In the end, I would say it is {neg}.", "All in all, {complaint}."],
    "neutral": ["That is all I can say about it for now.", "I have no strong opinion yet."],
}

JA_COMMON = {
    "item": JA_ITEMS,
    "pos_adj": ["素晴らしい", "良い", "使い|やすい", "かわいい", "快適|です", "便利|です"],
    "neg_adj": ["ひどい", "悪い", "使い|にくい", "重い", "不便|です", "最悪|です"],
    "neg_of_pos": ["良く", "使い|やすく", "便利|じゃ"],
    "day": ["月曜日", "火曜日", "水曜日", "木曜日", "金曜日", "土曜日", "日曜日"],
    "when": ["先週", "昨日", "二|日|前|に", "先月", "今朝"],
    "color": ["黒", "白", "灰色", "青", "緑", "銀色"],
    "relative": ["姉", "兄", "母", "父", "同僚", "いとこ"],
    "place": ["会社", "受付", "実家", "郵便局", "宅配|ボックス"],
    "n": ["2", "3", "4", "5", "6", "10"],
}
JA_SENTIMENT = {
    "pos": [
        "この|{item}|は|とても|{pos_adj}|。",
        "{item}|が|大好き|です|。",
        "{item}|に|大満足|です|。",
        "{item}|は|最高|でし|た|！",
        "{item}|は|{pos_adj}|、|また|買い|たい|です|。",
        "{relative}|も|この|{item}|は|{pos_adj}|と|言って|い|ます|。",
        "本当|に|{pos_adj}|{item}|です|、|おすすめ|です|。",
    ],
    "neg": [
        "この|{item}|は|とても|{neg_adj}|。",
        "この|{item}|に|は|がっかり|し|まし|た|。",
        "{item}|は|最悪|でし|た|。",
        "{item}|は|{n}|日|で|壊れ|まし|た|、|返金|して|ほしい|です|。",
        "この|{item}|は|全然|{neg_of_pos}|ない|です|。",
        "{relative}|も|この|{item}|は|{neg_adj}|と|言って|い|ます|。",
        "{item}|は|{neg_adj}|、|二度と|買い|ませ|ん|。",
    ],
    "neutral": [
        "{item}|は|{day}|に|届き|まし|た|。",
        "{when}|{item}|を|買い|まし|た|。",
        "{item}|の|色|は|{color}|です|。",
        "{relative}|が|毎日|{item}|を|使って|い|ます|。",
        "{item}|は|{place}|に|置いて|あり|ます|。",
        "良く|も|悪く|も|ない|{item}|です|。",
        "{item}|は|{color}|の|ケース|と|説明書|が|付いて|い|ます|。",
    ],
}
JA_SENTIMENT_PREFIX = ["", "", "", "正直|に|言う|と|、|", "一|週間|使って|、|", "全体|的|に|、|", "今|の|ところ|、|"]
JA_SENTIMENT_SUFFIX = ["", "", "", "ネット|で|注文|し|まし|た|。", "{color}|の|箱|で|届き|まし|た|。", "{relative}|が|選び|まし|た|。"]
JA_SENTIMENT_FILLER = [
    "{day}|に|ネット|で|注文|し|まし|た|。",
    "{color}|の|箱|に|入って|い|まし|た|。",
    "{relative}|が|設定|を|手伝って|くれ|まし|た|。",
    "説明書|は|{n}|か国語|で|書か|れて|い|まし|た|。",
    "もう|{n}|週間|使って|い|ます|。",
    "配送|に|は|{n}|日|かかり|まし|た|。",
    "店|は|駅|の|近く|に|あり|ます|。",
    "いつも|かばん|に|入れて|い|ます|。",
    "前|の|{item}|は|何|年|も|使い|まし|た|。",
    "{relative}|も|{color}|の|同じ|モデル|を|持って|い|ます|。",
]
JA_SENTIMENT_ECHO = {
    "pos": ["結局|、|{pos_adj}|と|思い|ます|。", "とにかく|おすすめ|です|。"],
    "neg": ["結局|、|{neg_adj}|と|思い|ます|。", "とにかく|おすすめ|し|ませ|ん|。"],
    "neutral": ["今|の|ところ|特|に|意見|は|あり|ませ|ん|。", "以上|です|。"],
}


def make_sentiment(rng: random.Random, label: str, lang: str) -> tuple[dict, str, int]:
    kind, target = length_class(rng)
    if lang == "en":
        slots = EN_SENTIMENT_SLOTS
        core = fill(rng, rng.choice(EN_SENTIMENT[label]), slots)
        prefix = rng.choice(EN_SENTIMENT_PREFIX)
        core = prefix + (core[0].lower() + core[1:] if prefix and not core.startswith("I ") else core)
        core += fill(rng, rng.choice(EN_SENTIMENT_SUFFIX), slots)
        joiner = " "
        filler = lambda: fill(rng, rng.choice(EN_SENTIMENT_FILLER), slots)  # noqa: E731
        echo = fill(rng, rng.choice(EN_SENTIMENT_ECHO[label]), slots)
    else:
        slots = JA_COMMON
        core = fill(rng, rng.choice(JA_SENTIMENT_PREFIX) + rng.choice(JA_SENTIMENT[label]), slots)
        core += fill(rng, rng.choice(JA_SENTIMENT_SUFFIX), slots)
        joiner = SEP
        filler = lambda: fill(rng, rng.choice(JA_SENTIMENT_FILLER), slots)  # noqa: E731
        echo = fill(rng, rng.choice(JA_SENTIMENT_ECHO[label]), slots)
    pieces = [core]
    if kind != "short":
        # The opinion comes early (it survives truncation), background follows, an echo may close.
        head = [filler() for _ in range(rng.randint(0, 2))]
        pieces = grow(rng, head + [core], filler, target - estimate_tokens(echo), joiner, estimate_tokens)
        if rng.random() < 0.6:
            pieces.append(echo)
    marked = joiner.join(pieces)
    text = marked if lang == "en" else ja_text(marked)
    return {"text": text, "label": label}, text, count_words(marked, lang)


# --------------------------------------------------------------------------- topic (multilabel)

EN_TOPIC = {
    "sports": [
        "the {team} won the {game} last night",
        "{athlete} scored twice in the {game}",
        "the coach planned extra training before the {game}",
        "tickets for the {game} sold out quickly",
        "the new league season starts next week",
        "{athlete} finished the marathon in record time",
        "the stadium was full for the {game}",
    ],
    "tech": [
        "the new {device} runs the latest software update",
        "our engineers moved the database to a cloud server",
        "the {app} crashed after the update",
        "researchers trained a new AI model",
        "I wrote a small program in Python",
        "the {device} has a faster processor and more memory",
        "a security bug was found in the {app}",
    ],
    "food": [
        "we ate {dish} at a small restaurant",
        "the chef cooked {dish} with fresh vegetables",
        "my grandmother shared her recipe for {dish}",
        "the bakery sells warm bread and cake",
        "I had {dish} for breakfast",
        "the dessert menu has chocolate ice cream",
        "the food market offers {dish} every weekend",
    ],
    "travel": [
        "we booked a flight to {city}",
        "the hotel in {city} had a view of the sea",
        "I lost my passport at the airport",
        "the train to {city} was full of tourists",
        "we went sightseeing in {city} for three days",
        "our tour guide showed us an old castle near {city}",
        "the ferry to the island was delayed by the wind",
    ],
    "finance": [
        "the stock market fell sharply today",
        "the central bank raised interest rates",
        "I opened a savings account at the bank",
        "investors are worried about inflation",
        "the company reported higher profits this quarter",
        "we made a monthly budget to pay off the loan",
        "the price of government bonds went up",
    ],
}
EN_TOPIC_SLOTS = {
    "team": ["national team", "local club", "home team", "visiting team"],
    "game": ["football match", "baseball game", "tennis final", "basketball game", "rugby match"],
    "athlete": ["the striker", "the pitcher", "our captain", "the young forward"],
    "device": ["smartphone", "laptop", "tablet", "smartwatch"],
    "app": ["map app", "photo app", "calendar app", "chat app"],
    "dish": ["ramen", "sushi", "curry", "pasta", "tempura", "pancakes", "dumplings"],
    "city": ["Kyoto", "Paris", "Osaka", "Rome", "Sapporo", "Lisbon", "Seoul"],
}
EN_TOPIC_JOIN = ["{a}, and {b}.", "{A}. Also, {b}.", "While {a}, {b}.", "{A}; meanwhile {b}.", "{A}. On top of that, {b}."]
EN_TOPIC_PREFIX = ["", "", "", "Big news: ", "According to my notes, ", "In short, "]
EN_NEUTRAL_FILLER = [
    "It was a cloudy day.",
    "My neighbour told me about it over coffee.",
    "I wrote it down in my notebook.",
    "Everyone in the office was talking about it.",
    "I read about it on the way home.",
    "Nobody expected that.",
    "It happened around noon.",
    "I will ask my brother what he thinks.",
]

JA_TOPIC = {
    "sports": [
        "{team}|が|{game}|で|勝ち|まし|た",
        "{athlete}|が|{game}|で|二|点|決め|まし|た",
        "監督|は|{game}|の|前|に|練習|を|増やし|まし|た",
        "{game}|の|チケット|は|すぐ|に|売り切れ|まし|た",
        "新しい|リーグ|の|シーズン|が|来週|始まり|ます",
        "{athlete}|が|マラソン|で|新記録|を|出し|まし|た",
        "{game}|で|スタジアム|は|満員|でし|た",
    ],
    "tech": [
        "新しい|{device}|に|ソフトウェア|の|更新|が|来|まし|た",
        "エンジニア|が|データベース|を|クラウド|の|サーバー|に|移し|まし|た",
        "{app}|が|アップデート|の|後|に|落ち|ます",
        "研究者|が|新しい|人工|知能|の|モデル|を|作り|まし|た",
        "パイソン|で|小さな|プログラム|を|書き|まし|た",
        "その|{device}|は|プロセッサ|が|速く|て|メモリ|も|多い|です",
        "{app}|に|セキュリティ|の|バグ|が|見つかり|まし|た",
    ],
    "food": [
        "小さな|店|で|{dish}|を|食べ|まし|た",
        "料理人|が|新鮮|な|野菜|で|{dish}|を|作り|まし|た",
        "祖母|が|{dish}|の|レシピ|を|教えて|くれ|まし|た",
        "その|パン屋|は|温かい|パン|と|ケーキ|を|売って|い|ます",
        "朝ごはん|に|{dish}|を|食べ|まし|た",
        "デザート|に|チョコレート|の|アイス|が|あり|ます",
        "週末|の|市場|で|は|{dish}|が|食べ|られ|ます",
    ],
    "travel": [
        "{city}|行き|の|飛行機|を|予約|し|まし|た",
        "{city}|の|ホテル|から|海|が|見え|まし|た",
        "空港|で|パスポート|を|なくし|まし|た",
        "{city}|行き|の|電車|は|観光客|で|いっぱい|でし|た",
        "{city}|で|三|日|間|観光|し|まし|た",
        "ガイド|さん|が|{city}|の|近く|の|古い|お城|を|案内|して|くれ|まし|た",
        "島|へ|の|フェリー|が|風|で|遅れ|まし|た",
    ],
    "finance": [
        "今日|は|株価|が|大きく|下がり|まし|た",
        "中央|銀行|が|金利|を|上げ|まし|た",
        "銀行|で|貯金|の|口座|を|開き|まし|た",
        "投資家|は|インフレ|を|心配|して|い|ます",
        "会社|の|今期|の|利益|が|増え|まし|た",
        "ローン|を|返す|ため|に|毎月|の|予算|を|決め|まし|た",
        "国債|の|価格|が|上がり|まし|た",
    ],
}
JA_TOPIC_SLOTS = {
    "team": ["日本|代表", "地元|の|チーム", "ホーム|チーム"],
    "game": ["サッカー|の|試合", "野球|の|試合", "テニス|の|決勝", "バスケ|の|試合"],
    "athlete": ["エース", "キャプテン", "若い|選手", "ピッチャー"],
    "device": ["スマホ", "タブレット", "ノート|パソコン", "スマート|ウォッチ"],
    "app": ["地図|アプリ", "写真|アプリ", "カレンダー|アプリ", "チャット|アプリ"],
    "dish": ["ラーメン", "寿司", "カレー", "天ぷら", "うどん", "パスタ", "餃子"],
    "city": ["京都", "大阪", "札幌", "パリ", "ローマ", "沖縄", "ソウル"],
}
JA_TOPIC_JOIN = ["{a}|。|{b}|。", "{a}|。|また|、|{b}|。", "{a}|。|それから|、|{b}|。", "{a}|。|さらに|{b}|。"]
JA_TOPIC_PREFIX = ["", "", "", "ところで|、|", "ニュース|に|よる|と|、|", "友達|の|話|で|は|、|"]
JA_NEUTRAL_FILLER = [
    "その|日|は|曇り|でし|た|。",
    "近所|の|人|が|お茶|を|飲み|ながら|教えて|くれ|まし|た|。",
    "ノート|に|メモ|し|まし|た|。",
    "会社|で|は|みんな|その|話|を|して|い|まし|た|。",
    "帰り道|に|読み|まし|た|。",
    "誰|も|予想|して|い|ませ|ん|でし|た|。",
    "お昼|ごろ|の|こと|でし|た|。",
    "兄|に|どう|思う|か|聞いて|みる|つもり|です|。",
]


def topic_clause(rng: random.Random, topic: str, lang: str) -> str:
    if lang == "en":
        return fill(rng, rng.choice(EN_TOPIC[topic]), EN_TOPIC_SLOTS)
    return fill(rng, rng.choice(JA_TOPIC[topic]), JA_TOPIC_SLOTS)


def topic_sentence(rng: random.Random, topics: list[str], lang: str) -> str:
    """One sentence (or two joined) naming every topic in `topics` once, in random order."""
    order = rng.sample(topics, len(topics))
    clauses = [topic_clause(rng, t, lang) for t in order]
    if lang == "en":
        text = clauses[0]
        for clause in clauses[1:]:
            text = fill(rng, rng.choice(EN_TOPIC_JOIN), {"a": [text], "A": [cap(text)], "b": [clause]}).rstrip(".")
        prefix = rng.choice(EN_TOPIC_PREFIX)
        if not prefix:
            return cap(text) + "."
        return prefix + (text if text.startswith("I ") else text[0].lower() + text[1:]) + "."
    text = clauses[0]
    for clause in clauses[1:]:
        text = fill(rng, rng.choice(JA_TOPIC_JOIN), {"a": [text], "b": [clause]}).rstrip("。").rstrip(SEP)
    return rng.choice(JA_TOPIC_PREFIX) + text + "|。"


def make_topic(rng: random.Random, topics: list[str], lang: str) -> tuple[dict, str, int]:
    kind, target = length_class(rng)
    first = topic_sentence(rng, topics, lang)
    joiner = " " if lang == "en" else SEP
    fillers = EN_NEUTRAL_FILLER if lang == "en" else JA_NEUTRAL_FILLER
    pieces = [first]
    if kind != "short":
        # More sentences about the same topics, mixed with topic-free background.
        def more() -> str:
            if rng.random() < 0.4:
                return rng.choice(fillers)
            return topic_sentence(rng, [rng.choice(topics)], lang)

        pieces = grow(rng, pieces, more, target, joiner, estimate_tokens)
    marked = joiner.join(pieces)
    text = marked if lang == "en" else ja_text(marked)
    return {"text": text, "topics": [t for t in TOPICS if t in topics]}, text, count_words(marked, lang)


def draw_topics(rng: random.Random) -> list[str]:
    r = rng.random()
    k = 1 if r < 0.55 else 2 if r < 0.93 else 3
    return rng.sample(TOPICS, k)


# --------------------------------------------------------------------------- similarity (regression)

SLOTS = ["who", "verb", "what", "where", "when"]
VAGUE_SLOTS = ["who", "what", "where", "when"]  # the verb is always stated
EN_EVENT = {
    "who": ["Ken", "Maria", "my brother", "the teacher", "our neighbour", "a student", "Yuki", "the doctor"],
    "verb": ["bought", "found", "borrowed", "sold", "repaired", "painted", "lost", "carried"],
    "what": ["a red umbrella", "an old bicycle", "a new camera", "a wooden chair", "a small lamp", "a blue guitar", "a heavy box", "a paper map"],
    "where": ["in the park", "at the station", "in the library", "at the market", "near the river", "at school", "in the garage", "at the office"],
    "when": ["on Monday", "yesterday", "last night", "this morning", "on Sunday", "after lunch", "at noon", "in the evening"],
}
EN_VAGUE = {"who": "someone", "what": "something"}  # a vague place or time is simply left out
JA_EVENT = {
    "who": ["健|さん", "マリア|さん", "兄", "先生", "近所|の|人", "学生", "由紀|さん", "医者"],
    "verb": ["買い|まし|た", "見つけ|まし|た", "借り|まし|た", "売り|まし|た", "直し|まし|た", "塗り|まし|た", "なくし|まし|た", "運び|まし|た"],
    "what": ["赤い|傘", "古い|自転車", "新しい|カメラ", "木|の|椅子", "小さな|ランプ", "青い|ギター", "重い|箱", "紙|の|地図"],
    "where": ["公園", "駅", "図書館", "市場", "川|の|近く", "学校", "ガレージ", "会社"],
    "when": ["月曜日|に", "昨日", "昨夜", "今朝", "日曜日|に", "昼食|の|後|で", "正午|に", "夕方|に"],
}
JA_VAGUE = {"who": "誰か", "what": "何か"}


def render_event(rng: random.Random, event: dict[str, str | None], lang: str) -> str:
    """One sentence; the place and time (when stated) go in a random order and position."""
    extras = [event[k] for k in ("where", "when") if event[k] is not None]
    rng.shuffle(extras)
    if lang == "en":
        who = event["who"] or EN_VAGUE["who"]
        what = event["what"] or EN_VAGUE["what"]
        core = f"{who} {event['verb']} {what}"
        if extras and rng.random() < 0.4:
            return f"{cap(extras[0])}, " + " ".join([core] + extras[1:]) + "."
        return cap(" ".join([core] + extras)) + "."
    who = (event["who"] or JA_VAGUE["who"]) + rng.choice(["|は", "|が"])
    what = (event["what"] or JA_VAGUE["what"]) + ("|を" if event["what"] else "")
    adverbials = [e + "|で" if e == event["where"] else e for e in extras]
    if rng.random() < 0.5:
        parts = [who] + adverbials
    else:
        parts = adverbials + ([SEP.join(["、", who])] if adverbials else [who])
    return SEP.join(parts + [what, event["verb"], "。"])


def event_pair(rng: random.Random, shared: int, lang: str) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Two events that state the same thing for exactly `shared` of the five slots.

    Every other slot differs: either both sentences state it with different
    values, or one (rarely both) leaves it vague ("someone", "something") or out.
    """
    vocab = EN_EVENT if lang == "en" else JA_EVENT
    a: dict[str, str | None] = {slot: rng.choice(vocab[slot]) for slot in SLOTS}
    b = dict(a)
    same = set(rng.sample(SLOTS, shared))
    for slot in SLOTS:
        if slot in same:
            continue
        r = rng.random()
        if slot not in VAGUE_SLOTS or r < 0.5:
            b[slot] = rng.choice([v for v in vocab[slot] if v != a[slot]])
        elif r < 0.7:
            a[slot] = None
        elif r < 0.9:
            b[slot] = None
        else:
            a[slot] = b[slot] = None
    return a, b


def make_similarity(rng: random.Random, shared: int, lang: str) -> tuple[dict, str, int]:
    """Score = slots both sentences state alike (0-5) per event, averaged over the events of a long pair."""
    kind, target = length_class(rng)
    joiner = " " if lang == "en" else SEP
    a_parts, b_parts, overlaps = [], [], []

    def add(k: int) -> None:
        a, b = event_pair(rng, k, lang)
        a_parts.append(render_event(rng, a, lang))
        b_parts.append(render_event(rng, b, lang))
        overlaps.append(k)

    add(shared)
    if kind != "short":
        # A story of several events; each pair of sentences is compared slot by slot.
        for _ in range(40):
            add(rng.randint(0, 5))
            total = estimate_tokens(joiner.join(a_parts)) + estimate_tokens(joiner.join(b_parts))
            if total > TOKEN_CAP:
                a_parts.pop(), b_parts.pop(), overlaps.pop()
                break
            if total >= target:
                break
    marked_a, marked_b = joiner.join(a_parts), joiner.join(b_parts)
    text_a, text_b = (marked_a, marked_b) if lang == "en" else (ja_text(marked_a), ja_text(marked_b))
    score = round(sum(overlaps) / len(overlaps), 2)
    row = {"text_a": text_a, "text_b": text_b, "score": score}
    return row, text_a + "\n" + text_b, count_words(marked_a, lang) + count_words(marked_b, lang)


# --------------------------------------------------------------------------- entities (token classification)

EN_PER = ["John Smith", "Mary Johnson", "Emma", "David Lee", "Sarah Brown", "Carlos Garcia", "Aiko Tanaka", "Ken Sato",
          "Olivia", "Liam Walker", "Priya Patel", "Anna Müller", "Tom", "Maria Rossi"]
EN_LOC = ["London", "Paris", "New York", "San Francisco", "Tokyo", "Osaka", "Berlin", "Sydney", "Rio de Janeiro",
          "Kyoto", "Cape Town", "Toronto", "Hokkaido", "Lake Biwa"]
EN_ORG = ["Google", "Toyota", "Sony", "Acme Corp", "World Bank", "United Nations", "Red Cross", "Nintendo",
          "Globex Industries", "Bank of Japan", "Kyoto University", "Stanford University", "Tokyo Electric Power", "Panasonic"]
EN_ENTITY_TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .",
    "{PER} flew from {LOC} to {LOC} last week .",
    "{ORG} opened a new office in {LOC} .",
    "Yesterday {PER} met {PER} at the {ORG} headquarters .",
    "{PER} , a manager at {ORG} , lives in {LOC} .",
    "According to {ORG} , prices in {LOC} rose again .",
    "{PER} visited {LOC} with their family .",
    "The conference in {LOC} was organised by {ORG} .",
    "{PER} joined {ORG} after leaving {ORG} .",
    "We had dinner with {PER} near {LOC} .",
    "{ORG} and {ORG} signed a deal on Monday .",
    "Have you ever been to {LOC} ?",
    "The weather was nice , so we stayed at home .",
    "My sister started a new job last spring .",
]
JA_PER = ["田中", "佐藤|花子", "鈴木|一郎", "高橋", "山本|健太", "伊藤|美咲", "渡辺", "中村|翔", "小林", "加藤|恵"]
JA_LOC = ["東京", "大阪", "京都", "北海道", "沖縄", "名古屋", "ニューヨーク", "パリ", "福岡", "横浜", "琵琶湖"]
JA_ORG = ["トヨタ", "ソニー", "任天堂", "日本|銀行", "京都|大学", "東京|大学", "国連", "楽天", "ユニクロ", "パナソニック"]
JA_ENTITY_TEMPLATES = [
    "{PER}|さん|は|{ORG}|で|働いて|い|ます|。",
    "{PER}|さん|は|{LOC}|から|{LOC}|へ|飛行機|で|行き|まし|た|。",
    "{ORG}|は|{LOC}|に|新しい|事務所|を|開き|まし|た|。",
    "昨日|、|{PER}|さん|は|{PER}|さん|と|{LOC}|で|会い|まし|た|。",
    "{ORG}|に|よる|と|、|{LOC}|の|物価|が|また|上がり|まし|た|。",
    "{PER}|さん|は|家族|と|{LOC}|を|訪れ|まし|た|。",
    "{LOC}|の|会議|は|{ORG}|が|主催|し|まし|た|。",
    "{PER}|さん|は|{ORG}|を|辞めて|{ORG}|に|入り|まし|た|。",
    "{LOC}|の|近く|で|{PER}|さん|と|夕食|を|食べ|まし|た|。",
    "{ORG}|と|{ORG}|が|月曜日|に|契約|を|結び|まし|た|。",
    "{LOC}|に|行った|こと|が|あり|ます|か|？",
    "天気|が|良かった|ので|家|で|休み|まし|た|。",
    "姉|は|去年|の|春|に|新しい|仕事|を|始め|まし|た|。",
]


def entity_sentence(rng: random.Random, lang: str) -> tuple[list[str], list[str]]:
    if lang == "en":
        template, split = rng.choice(EN_ENTITY_TEMPLATES), str.split
        names = {"PER": EN_PER, "LOC": EN_LOC, "ORG": EN_ORG}
    else:
        template, split = rng.choice(JA_ENTITY_TEMPLATES), lambda s: s.split(SEP)
        names = {"PER": JA_PER, "LOC": JA_LOC, "ORG": JA_ORG}
    tokens: list[str] = []
    tags: list[str] = []
    used: set[str] = set()  # two slots of one sentence never get the same name
    for part in re.split(r"(\{[A-Z]+\})", template):
        slot = re.fullmatch(r"\{([A-Z]+)\}", part)
        if slot:
            name = rng.choice([n for n in names[slot.group(1)] if n not in used])
            used.add(name)
            words = split(name)
            tokens += words
            tags += [f"B-{slot.group(1)}"] + [f"I-{slot.group(1)}"] * (len(words) - 1)
        else:
            words = [w for w in split(part) if w]
            tokens += words
            tags += ["O"] * len(words)
    return tokens, tags


def make_entities(rng: random.Random, lang: str) -> tuple[dict, str, int]:
    kind, target = length_class(rng)
    tokens, tags = entity_sentence(rng, lang)
    joiner = " " if lang == "en" else ""
    if kind != "short":
        for _ in range(60):
            more_tokens, more_tags = entity_sentence(rng, lang)
            if estimate_tokens(" ".join(tokens + more_tokens)) > TOKEN_CAP:
                break
            tokens, tags = tokens + more_tokens, tags + more_tags
            if estimate_tokens(" ".join(tokens)) >= target:
                break
    words = sum(1 for t in tokens if not _is_punct(t))
    return {"tokens": tokens, "tags": tags}, joiner.join(tokens), words


# --------------------------------------------------------------------------- driver


def generate(task: str, seed: int) -> tuple[list[tuple[dict, str, int, str]], list[tuple[dict, str, int, str]]]:
    """(train, eval) lists of (row, plain text, words, lang); no text appears twice in a task."""
    rng = random.Random(f"{seed}:{task}")
    total = TRAIN_ROWS + EVAL_ROWS
    # Balanced targets, shuffled: the label for row i and its language.
    if task == "sentiment":
        targets = [SENTIMENTS[i % 3] for i in range(total)]
    elif task == "similarity":
        targets = [i % 6 for i in range(total)]
    else:
        targets = [None] * total
    langs = ["en" if i % 2 == 0 else "ja" for i in range(total)]
    rng.shuffle(targets)
    rng.shuffle(langs)
    rows, seen = [], set()
    for target, lang in zip(targets, langs):
        for _ in range(1000):
            if task == "sentiment":
                row, text, words = make_sentiment(rng, target, lang)
            elif task == "topic":
                row, text, words = make_topic(rng, draw_topics(rng), lang)
            elif task == "similarity":
                row, text, words = make_similarity(rng, target, lang)
            else:
                row, text, words = make_entities(rng, lang)
            if text not in seen:
                break
        else:
            raise RuntimeError(f"{task}: could not make a new distinct row")
        seen.add(text)
        rows.append((row, text, words, lang))
    return rows[:TRAIN_ROWS], rows[TRAIN_ROWS:]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def balance(task: str, rows: list[dict]) -> str:
    if task == "sentiment":
        counts = Counter(r["label"] for r in rows)
        return " ".join(f"{k}={counts[k]}" for k in SENTIMENTS)
    if task == "topic":
        counts = Counter(t for r in rows for t in r["topics"])
        sizes = Counter(len(r["topics"]) for r in rows)
        return " ".join(f"{k}={counts[k]}" for k in TOPICS) + "  labels/row " + " ".join(f"{k}:{sizes[k]}" for k in sorted(sizes))
    if task == "similarity":
        scores = [r["score"] for r in rows]
        buckets = Counter(min(4, int(s)) if s < 5 else 5 for s in scores)
        return f"mean={sum(scores) / len(scores):.2f} " + " ".join(f"[{k}]={buckets[k]}" for k in range(6))
    counts = Counter(t for r in rows for t in r["tags"])
    none = sum(1 for r in rows if set(r["tags"]) == {"O"})
    return " ".join(f"{k}={counts[k]}" for k in ENTITY_TAGS) + f"  rows-without-entities={none}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--seed", type=int, default=20240611)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"writing to {args.out} (seed {args.seed})")
    for task in ("sentiment", "topic", "similarity", "entities"):
        for split, rows in zip(("train", "eval"), generate(task, args.seed)):
            path = args.out / f"{task}.{split}.jsonl"
            write_jsonl(path, [r[0] for r in rows])
            words = [r[2] for r in rows]
            tokens = [estimate_tokens(r[1]) for r in rows]
            ja = sum(1 for r in rows if r[3] == "ja")
            long_rows = sum(1 for t in tokens if t >= 40)
            print(f"{path.name:26} {len(rows):4} rows  ja={ja:3}  {path.stat().st_size / 1024:6.1f} KiB")
            print(f"    labels: {balance(task, [r[0] for r in rows])}")
            print(f"    words:  {percentiles(words)}")
            print(f"    tokens: {percentiles(tokens)}  (estimated; rows >= 40 tokens: {long_rows})")
    size = sum(p.stat().st_size for p in args.out.glob("*.jsonl"))
    print(f"total {size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
