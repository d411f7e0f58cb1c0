%%--------------------------------------------------------------------
%% Minimal JSON decoder for the EMQX double (OTP 25 has no json module):
%% reads release.json and config.hocon (which the project writes in JSON
%% syntax). Objects become maps with binary keys, as EMQX hands them over.
%%--------------------------------------------------------------------
-module(emqx_double_json).

-export([decode/1]).

decode(Bin) when is_binary(Bin) ->
    {Value, Rest} = value(ws(Bin)),
    <<>> = ws(Rest),
    Value.

value(<<"{", R/binary>>) -> object(ws(R), #{});
value(<<"[", R/binary>>) -> array(ws(R), []);
value(<<"\"", R/binary>>) -> string(R, <<>>);
value(<<"true", R/binary>>) -> {true, R};
value(<<"false", R/binary>>) -> {false, R};
value(<<"null", R/binary>>) -> {null, R};
value(R) -> number(R).

object(<<"}", R/binary>>, Acc) ->
    {Acc, R};
object(<<"\"", R0/binary>>, Acc) ->
    {Key, R1} = string(R0, <<>>),
    <<":", R2/binary>> = ws(R1),
    {Val, R3} = value(ws(R2)),
    case ws(R3) of
        <<",", R4/binary>> -> object(ws(R4), Acc#{Key => Val});
        <<"}", R4/binary>> -> {Acc#{Key => Val}, R4}
    end.

array(<<"]", R/binary>>, Acc) ->
    {lists:reverse(Acc), R};
array(R0, Acc) ->
    {Val, R1} = value(R0),
    case ws(R1) of
        <<",", R2/binary>> -> array(ws(R2), [Val | Acc]);
        <<"]", R2/binary>> -> {lists:reverse([Val | Acc]), R2}
    end.

string(<<"\"", R/binary>>, Acc) -> {Acc, R};
string(<<"\\n", R/binary>>, Acc) -> string(R, <<Acc/binary, "\n">>);
string(<<"\\t", R/binary>>, Acc) -> string(R, <<Acc/binary, "\t">>);
string(<<"\\\"", R/binary>>, Acc) -> string(R, <<Acc/binary, "\"">>);
string(<<"\\\\", R/binary>>, Acc) -> string(R, <<Acc/binary, "\\">>);
string(<<"\\/", R/binary>>, Acc) -> string(R, <<Acc/binary, "/">>);
string(<<"\\u", H:4/binary, R/binary>>, Acc) ->
    C = binary_to_integer(H, 16),
    string(R, <<Acc/binary, C/utf8>>);
string(<<C, R/binary>>, Acc) -> string(R, <<Acc/binary, C>>).

number(Bin) ->
    {match, [Num]} = re:run(Bin, <<"^-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?">>, [{capture, first, binary}]),
    Rest = binary:part(Bin, byte_size(Num), byte_size(Bin) - byte_size(Num)),
    Value =
        case binary:match(Num, [<<".">>, <<"e">>, <<"E">>]) of
            nomatch -> binary_to_integer(Num);
            _ -> binary_to_float(Num)
        end,
    {Value, Rest}.

ws(<<C, R/binary>>) when C =:= $\s; C =:= $\t; C =:= $\n; C =:= $\r -> ws(R);
ws(R) -> R.
